//! `clamgate scan FILE...`: files scanned through the same scan path as every other front door
//! (held like a Scan API body, then [`crate::scanner::Scanner::scan_held`]: cache, single-flight, deadline), one
//! line per file on stdout.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::AsyncReadExt;

use crate::app::AppError;
use crate::config::Config;
use crate::metrics::{Metrics, Source};
use crate::spool::Spool;
use crate::verdict::Verdict;

/// Bytes read from a file at a time.
const READ_BYTES: usize = 256 * 1024;

/// The outcome of `clamgate scan`, as its exit code says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilesOutcome {
    /// Every file is clean (exit 0).
    AllClean = 0,
    /// Something could not be scanned, nothing infected (exit 2).
    SomethingUnscanned = 2,
    /// Something is infected (exit 1): outranks unscanned.
    SomethingInfected = 1,
}

impl FilesOutcome {
    /// The worse of two outcomes: infected over unscanned over clean.
    fn worse(self, other: FilesOutcome) -> FilesOutcome {
        let rank = |outcome: FilesOutcome| match outcome {
            FilesOutcome::AllClean => 0,
            FilesOutcome::SomethingUnscanned => 1,
            FilesOutcome::SomethingInfected => 2,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }

    /// The process exit code.
    pub fn exit_code(self) -> u8 {
        self as u8
    }
}

/// Scans `files` with the configured clamd and verdict cache, printing
/// `PATH: clean|infected SIGNATURE|unscanned REASON sha256=HEX[ (cached)]` or `PATH: error: ...`
/// for each. An error building the scanner (bad settings) is returned before any file is read.
pub async fn scan_files(config: &Config, files: &[PathBuf]) -> Result<FilesOutcome, AppError> {
    let metrics = Arc::new(Metrics::new());
    let scanner = crate::app::build_scanner(config, metrics.clone())?;
    if let Ok(version) = scanner.clamd().version().await {
        scanner.set_engine_version(version);
    }
    // Files are held like Scan API bodies (memory, then temp files) and scanned whole.
    let spool = Spool::from_config(&config.bodies, metrics);
    let mut worst = FilesOutcome::AllClean;
    for path in files {
        let mut file = match tokio::fs::File::open(path).await {
            Ok(file) => file,
            Err(err) => {
                println!("{}: error: {err}", path.display());
                worst = worst.worse(FilesOutcome::SomethingUnscanned);
                continue;
            }
        };
        let mut scan = scanner.streaming(Source::Api, spool.hold());
        let mut buffer = vec![0u8; READ_BYTES];
        let mut read_error = None;
        loop {
            let held = match file.read(&mut buffer).await {
                Ok(0) => break,
                Ok(n) => scan.push(bytes::Bytes::copy_from_slice(&buffer[..n])).await,
                Err(err) => Err(err),
            };
            if let Err(err) = held {
                read_error = Some(err);
                break;
            }
        }
        if let Some(err) = read_error {
            println!("{}: error: {err}", path.display());
            worst = worst.worse(FilesOutcome::SomethingUnscanned);
            continue;
        }
        let report = scan.finish().await;
        let (line, outcome) = match &report.verdict {
            Verdict::Clean => ("clean".to_string(), FilesOutcome::AllClean),
            Verdict::Infected { signature } => {
                (format!("infected {signature}"), FilesOutcome::SomethingInfected)
            }
            Verdict::Unscanned { reason } => {
                (format!("unscanned {reason}"), FilesOutcome::SomethingUnscanned)
            }
        };
        println!(
            "{}: {line} sha256={}{}",
            path.display(),
            report.sha256,
            if report.cached { " (cached)" } else { "" }
        );
        worst = worst.worse(outcome);
    }
    Ok(worst)
}

#[cfg(test)]
mod tests {
    use super::FilesOutcome::*;

    #[test]
    fn infected_outranks_unscanned_which_outranks_clean() {
        assert_eq!(AllClean.worse(SomethingUnscanned), SomethingUnscanned);
        assert_eq!(SomethingUnscanned.worse(SomethingInfected), SomethingInfected);
        assert_eq!(SomethingInfected.worse(SomethingUnscanned), SomethingInfected);
        assert_eq!(SomethingInfected.worse(AllClean), SomethingInfected);
        assert_eq!([AllClean, SomethingInfected, SomethingUnscanned].map(|o| o.exit_code()), [0, 1, 2]);
    }
}
