//! The latency scenarios: which route, which object, and what each one is compared with. (The
//! `large` selection is not one of them: `large.rs` measures it.)

use crate::envoy::{MIRROR_NOSCAN_PREFIX, MIRROR_PREFIX, NOSCAN_PREFIX};
use crate::upstream::{fixed_name, unique_name};

/// What the command line selects (`--scenarios`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Selection {
    /// The scanned route's copy with ext_proc disabled.
    Baseline,
    /// The scanned route, one object again and again (a content-key cache hit).
    Content,
    /// The `/mirror/` route (resource-key policy), one object again and again, and the same route
    /// with ext_proc disabled.
    Resource,
    /// The scanned route, a new object every request (a clamd scan each).
    Miss,
    /// The `/mirror/` route through a second Envoy whose processor is a do-nothing one
    /// (`noop.rs`): the floor any processor pays on the resource-hit path.
    Noop,
    /// Large bodies (`--large-sizes`), one at a time: a direct clamd INSTREAM from the bench, the
    /// download through Envoy scanned (FULL_DUPLEX, a real scan each), and the same download with
    /// ext_proc disabled (`large.rs`). Not a latency scenario: it has its own report section.
    Large,
}

/// One measured scenario, in the order they run for each body size and concurrency.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Scenario {
    Baseline,
    ContentHit,
    MirrorNoscan,
    ResourceHit,
    NoopHit,
    Miss,
}

pub const ALL: [Scenario; 6] = [
    Scenario::Baseline,
    Scenario::ContentHit,
    Scenario::MirrorNoscan,
    Scenario::ResourceHit,
    Scenario::NoopHit,
    Scenario::Miss,
];

impl Scenario {
    pub fn selected_by(self, selection: &[Selection]) -> bool {
        let needed = match self {
            Scenario::Baseline => Selection::Baseline,
            Scenario::ContentHit => Selection::Content,
            Scenario::ResourceHit => Selection::Resource,
            Scenario::NoopHit => Selection::Noop,
            Scenario::Miss => Selection::Miss,
            // The baseline of both resource-hit and noop-hit.
            Scenario::MirrorNoscan => {
                return selection.contains(&Selection::Resource) || selection.contains(&Selection::Noop);
            }
        };
        selection.contains(&needed)
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Baseline => "baseline",
            Scenario::ContentHit => "content-hit",
            Scenario::MirrorNoscan => "mirror-noscan",
            Scenario::ResourceHit => "resource-hit",
            Scenario::NoopHit => "noop-hit",
            Scenario::Miss => "miss",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Scenario::Baseline => {
                "`GET /noscan/files/obj-N.bin`: a bench-only copy of the shipped `/` route with \
                 `ExtProcPerRoute { disabled: true }`. Envoy and the upstream only."
            }
            Scenario::ContentHit => {
                "`GET /files/obj-N.bin` on the shipped `/` route, the same object every time: after \
                 the first scan each request is a verdict-cache hit on the body's SHA-256, but the \
                 whole body still goes through ext_proc FULL_DUPLEX (Envoy streams it to clamgate, \
                 which holds and hashes it, finds the verdict, and sends it back in 64 KiB pieces)."
            }
            Scenario::MirrorNoscan => {
                "`GET /mirror-noscan/obj-N.bin`: a bench-only copy of the shipped `/mirror/` route \
                 with `ExtProcPerRoute { disabled: true }` (the baseline of resource-hit)."
            }
            Scenario::ResourceHit => {
                "`GET /mirror/obj-N.bin` on the shipped `/mirror/` route (policy `mirror`, \
                 `cache_mode = \"resource\"`), the same object (same ETag) every time: on a \
                 resource-key hit clamgate answers the response headers with a mode_override and \
                 the body streams through without ext_proc buffering it."
            }
            Scenario::NoopHit => {
                "`GET /mirror/obj-N.bin` through a second Envoy with the same config whose \
                 processor is a do-nothing one (benches/proxy/noop.rs): it answers the request \
                 headers and the response headers exactly as clamgate does on a resource-key hit, \
                 with no lookup, state or metrics. The floor of Envoy's two ext_proc round trips \
                 on this machine."
            }
            Scenario::Miss => {
                "`GET /files/u-…-N-i.bin` on the shipped `/` route, a new object (new bytes, new \
                 SHA-256) every request: each is a real clamd scan (INSTREAM over TCP)."
            }
        }
    }

    /// The scenario this one is compared with in the overhead table.
    pub fn compared_with(self) -> Option<Scenario> {
        match self {
            Scenario::ContentHit | Scenario::Miss => Some(Scenario::Baseline),
            Scenario::ResourceHit | Scenario::NoopHit => Some(Scenario::MirrorNoscan),
            Scenario::Baseline | Scenario::MirrorNoscan => None,
        }
    }

    /// Whether the response goes through clamgate (and carries `x-clamgate-verdict`).
    pub fn scanned(self) -> bool {
        !matches!(self, Scenario::Baseline | Scenario::MirrorNoscan)
    }

    /// The path of request `i` of the series `series` (unique objects only) with `size`-byte
    /// bodies.
    pub fn path(self, run: u64, series: usize, size: usize, i: u64) -> String {
        let noscan = NOSCAN_PREFIX.trim_end_matches('/');
        match self {
            Scenario::Baseline => format!("{noscan}/files/{}", fixed_name(size)),
            Scenario::ContentHit => format!("/files/{}", fixed_name(size)),
            Scenario::MirrorNoscan => format!("{MIRROR_NOSCAN_PREFIX}{}", fixed_name(size)),
            Scenario::ResourceHit | Scenario::NoopHit => format!("{MIRROR_PREFIX}{}", fixed_name(size)),
            Scenario::Miss => format!("/files/{}", unique_name(run, series, size, i)),
        }
    }
}
