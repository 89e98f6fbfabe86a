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
    /// The scanned route, a new object every request (a clamd scan each), and the same scans
    /// made by the bench straight to clamd (`clamd-direct`, `direct.rs`).
    Miss,
    /// The `/mirror/` and `/files/` routes through a second Envoy whose processor is a do-nothing
    /// one (`noop.rs`): the floors any processor pays on the resource-hit path (`noop-hit`) and
    /// on the content-hit path, holding and echoing the body (`echo-hit`).
    Noop,
    /// nginx (the shipped `nginx/nginx.conf` plus bench-only locations, `nginx.rs`): nginx alone,
    /// nginx with `auth_request` to a do-nothing endpoint (the floor of any auth_request service),
    /// nginx with clamgate's `/v1/auth` answering from the cache, and fetch on a miss (a new object
    /// every request, downloaded and scanned by clamgate before nginx proxies it).
    Nginx,
    /// The incumbent (`peer.rs`): squid + c-icap `virus_scan` on the same clamd, the same object
    /// again and again (`peer-repeat`) and a new object every request (`peer-unique`). Bodies up
    /// to 63 KiB only (Debian's squid 5.7 stalls above 64 KiB, squid bug 5352). Only when named.
    Peer,
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
    EchoHit,
    MirrorNoscan,
    ResourceHit,
    NoopHit,
    Miss,
    ClamdDirect,
    PeerRepeat,
    PeerUnique,
    NginxPlain,
    NginxNoopAuth,
    NginxHit,
    NginxFetch,
}

pub const ALL: [Scenario; 14] = [
    Scenario::Baseline,
    Scenario::ContentHit,
    Scenario::EchoHit,
    Scenario::MirrorNoscan,
    Scenario::ResourceHit,
    Scenario::NoopHit,
    Scenario::Miss,
    Scenario::ClamdDirect,
    Scenario::PeerRepeat,
    Scenario::PeerUnique,
    Scenario::NginxPlain,
    Scenario::NginxNoopAuth,
    Scenario::NginxHit,
    Scenario::NginxFetch,
];

impl Scenario {
    pub fn selected_by(self, selection: &[Selection]) -> bool {
        let needed = match self {
            Scenario::Baseline => Selection::Baseline,
            Scenario::ContentHit => Selection::Content,
            Scenario::ResourceHit => Selection::Resource,
            Scenario::NoopHit | Scenario::EchoHit => Selection::Noop,
            Scenario::Miss | Scenario::ClamdDirect => Selection::Miss,
            Scenario::PeerRepeat | Scenario::PeerUnique => Selection::Peer,
            Scenario::NginxPlain | Scenario::NginxNoopAuth | Scenario::NginxHit | Scenario::NginxFetch => {
                Selection::Nginx
            }
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
            Scenario::EchoHit => "echo-hit",
            Scenario::Miss => "miss",
            Scenario::ClamdDirect => "clamd-direct",
            Scenario::PeerRepeat => "peer-repeat",
            Scenario::PeerUnique => "peer-unique",
            Scenario::NginxPlain => "nginx-plain",
            Scenario::NginxNoopAuth => "nginx-noop-auth",
            Scenario::NginxHit => "nginx-hit",
            Scenario::NginxFetch => "nginx-fetch",
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
            Scenario::EchoHit => {
                "`GET /files/obj-N.bin` through the second Envoy (the same config) whose processor \
                 is a do-nothing one (benches/proxy/noop.rs) that does what clamgate does on a \
                 content-key hit minus the lookup and the hash: switches the download to \
                 FULL_DUPLEX_STREAMED, holds the headers and the whole body in memory, then \
                 answers the headers and sends the body back in 64 KiB pieces. The floor of \
                 content-hit."
            }
            Scenario::Miss => {
                "`GET /files/u-…-N-i.bin` on the shipped `/` route, a new object (new bytes, new \
                 SHA-256) every request: each is a real clamd scan (INSTREAM over TCP, or FILDES \
                 over clamd's unix socket with `--clamd-socket unix`)."
            }
            Scenario::ClamdDirect => {
                "No HTTP: the bench's own workers scan a new body of the same size each time \
                 straight with clamd (`zINSTREAM`, a new connection per scan, over the socket \
                 clamgate is given; benches/proxy/direct.rs). What clamd alone does: the floor of \
                 a miss."
            }
            Scenario::PeerRepeat => {
                "`GET /files/obj-N.bin` on squid 5.7 (reverse proxy, no squid cache) whose \
                 responses go to c-icap's `virus_scan` (RESPMOD), which has the same clamd scan \
                 them (`clamd_mod`, FILDES over its unix socket; benches/proxy/peer.rs); the same \
                 object every time, so clamd answers from its own cache of clean files."
            }
            Scenario::PeerUnique => {
                "`GET /files/u-…-N-i.bin` on squid + c-icap as in peer-repeat, a new object every \
                 request: a real clamd scan each."
            }
            Scenario::NginxPlain => {
                "`GET /plain/obj-N.bin` on nginx (the shipped `nginx/nginx.conf` with a bench-only \
                 location): nginx and the upstream only, no auth_request."
            }
            Scenario::NginxNoopAuth => {
                "`GET /noop-auth/obj-N.bin` on nginx: the shipped protected location, its \
                 `auth_request` sent to a do-nothing HTTP endpoint (benches/proxy/noop.rs) that \
                 answers at once what clamgate answers on a hit (`x-clamgate-verdict`, \
                 `x-clamgate-if-match`), then the upstream: the floor of any auth_request service \
                 (one loopback HTTP round trip per request)."
            }
            Scenario::NginxHit => {
                "`GET /mirror/obj-N.bin` on nginx's shipped `/mirror/` location: `auth_request` to \
                 clamgate's `GET /v1/auth`, answered from the verdict cache by resource key (the \
                 object was fetched and scanned before the timed phase), then the upstream with \
                 `If-Match`."
            }
            Scenario::NginxFetch => {
                "`GET /mirror/u-…-N-i.bin` on nginx's `/mirror/` location, a new object every \
                 request: clamgate misses, downloads the object from its origin (the upstream), \
                 scans it with clamd, caches the verdict, answers; then nginx fetches it again."
            }
        }
    }

    /// The scenario this one is compared with in the overhead table.
    pub fn compared_with(self) -> Option<Scenario> {
        match self {
            Scenario::ContentHit | Scenario::EchoHit | Scenario::Miss => Some(Scenario::Baseline),
            Scenario::ResourceHit | Scenario::NoopHit => Some(Scenario::MirrorNoscan),
            Scenario::NginxHit => Some(Scenario::NginxNoopAuth),
            Scenario::NginxNoopAuth | Scenario::NginxFetch => Some(Scenario::NginxPlain),
            Scenario::Baseline
            | Scenario::MirrorNoscan
            | Scenario::NginxPlain
            | Scenario::ClamdDirect
            | Scenario::PeerRepeat
            | Scenario::PeerUnique => None,
        }
    }

    /// Whether the response carries `x-clamgate-verdict` (from clamgate, or from the do-nothing
    /// auth endpoint that stands in for it).
    pub fn scanned(self) -> bool {
        !matches!(
            self,
            Scenario::Baseline
                | Scenario::MirrorNoscan
                | Scenario::NginxPlain
                | Scenario::ClamdDirect
                | Scenario::PeerRepeat
                | Scenario::PeerUnique
        )
    }

    /// Whether requests go to an Envoy (clamgate's or the do-nothing processor's).
    pub fn through_envoy(self) -> bool {
        !self.through_nginx() && !self.through_peer() && self != Scenario::ClamdDirect
    }

    /// Whether requests go to the incumbent (squid + c-icap).
    pub fn through_peer(self) -> bool {
        matches!(self, Scenario::PeerRepeat | Scenario::PeerUnique)
    }

    /// Whether the scenario can run with `size`-byte bodies.
    pub fn runs_with(self, size: usize) -> bool {
        !self.through_peer() || size <= crate::peer::MAX_BODY
    }

    /// Whether requests go to nginx rather than Envoy.
    pub fn through_nginx(self) -> bool {
        matches!(
            self,
            Scenario::NginxPlain | Scenario::NginxNoopAuth | Scenario::NginxHit | Scenario::NginxFetch
        )
    }

    /// The path of request `i` of the series `series` (unique objects only) with `size`-byte
    /// bodies.
    pub fn path(self, run: u64, series: usize, size: usize, i: u64) -> String {
        let noscan = NOSCAN_PREFIX.trim_end_matches('/');
        match self {
            Scenario::Baseline => format!("{noscan}/files/{}", fixed_name(size)),
            Scenario::ContentHit | Scenario::EchoHit | Scenario::PeerRepeat => {
                format!("/files/{}", fixed_name(size))
            }
            Scenario::MirrorNoscan => format!("{MIRROR_NOSCAN_PREFIX}{}", fixed_name(size)),
            Scenario::ResourceHit | Scenario::NoopHit => format!("{MIRROR_PREFIX}{}", fixed_name(size)),
            Scenario::Miss | Scenario::ClamdDirect | Scenario::PeerUnique => {
                format!("/files/{}", unique_name(run, series, size, i))
            }
            Scenario::NginxPlain => format!("/plain/{}", fixed_name(size)),
            Scenario::NginxNoopAuth => format!("/noop-auth/{}", fixed_name(size)),
            Scenario::NginxHit => format!("/mirror/{}", fixed_name(size)),
            Scenario::NginxFetch => format!("/mirror/{}", unique_name(run, series, size, i)),
        }
    }
}
