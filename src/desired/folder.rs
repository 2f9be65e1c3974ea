//! The folder source of the desired state: a scan of a manifest folder.
//! Objects of a broken file keep their last good state, a changed file
//! counts only once it has held still ([`Settle`]), and a round that would
//! state exactly what the last one did is skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::{Report, Round};
use crate::ledger::Ledger;
use crate::manifests::{Object, Scan, Sourced};

/// Who decided a request whose approval came from a file.
pub const MANIFEST_APPROVER: &str = "manifest";

/// Remembers the last good objects of every file.
#[derive(Default)]
pub struct Reconciler {
    last_good: BTreeMap<PathBuf, Vec<Sourced>>,
    /// What the last round stated, when every command of it succeeded: a
    /// round that would state the same again is skipped (a file being
    /// written changes the folder, not the intent).
    last_round: Option<(Vec<(PathBuf, Object)>, bool)>,
}

impl Reconciler {
    /// Applies a scan to the ledger. Files in `unsettled` (still being
    /// written, see [`Settle`]) count as broken: they keep their last good
    /// objects and nothing is removed.
    pub async fn reconcile(&mut self, ledger: &Ledger, scan: &Scan, unsettled: &BTreeSet<PathBuf>) -> Report {
        let mut report = Report {
            problems: scan
                .problems
                .iter()
                .filter(|p| !unsettled.contains(&p.file))
                .cloned()
                .collect(),
            applied: 0,
            failures: 0,
        };
        // Objects of good files replace what those files held before.
        let broken: BTreeSet<&PathBuf> = scan.broken.iter().chain(unsettled).collect();
        let mut by_file: BTreeMap<PathBuf, Vec<Sourced>> = BTreeMap::new();
        for s in &scan.objects {
            by_file.entry(s.file.clone()).or_default().push(s.clone());
        }
        let mut previous: BTreeMap<(String, String), PathBuf> = BTreeMap::new();
        for s in self.last_good.values().flatten() {
            let key = (s.object.namespace().to_string(), s.object.name().to_string());
            if matches!(s.object, Object::Member(_) | Object::Group(_) | Object::Account(_)) {
                previous.insert((format!("{}:{}", s.object.kind(), key.0), key.1), s.file.clone());
            }
        }
        self.last_good
            .retain(|file, _| scan.contents.contains_key(file) || broken.contains(file));
        for file in scan.contents.keys() {
            if !broken.contains(file) {
                self.last_good
                    .insert(file.clone(), by_file.remove(file).unwrap_or_default());
            }
        }
        let desired: Vec<&Sourced> = self.last_good.values().flatten().collect();
        let removals_allowed = broken.is_empty();
        let round_key = (
            desired
                .iter()
                .map(|s| (s.file.clone(), s.object.clone()))
                .collect::<Vec<_>>(),
            removals_allowed,
        );
        if self.last_round.as_ref() == Some(&round_key) {
            return report;
        }

        let mut round = Round {
            ledger,
            report: &mut report,
            scope: None,
            approver: |_| MANIFEST_APPROVER.to_string(),
            previous,
        };
        round.apply(&desired, removals_allowed).await;
        self.last_round = (report.failures == 0).then_some(round_key);
        report
    }
}

/// How many settle delays a file that does not end with a line break waits.
pub const UNTERMINATED_FACTOR: u32 = 10;

/// Decides when a changed file may be read as intent: only once its
/// content (or its absence) has been the same across reads at least
/// `delay` apart, so a file an editor is still writing in place never
/// counts. Until then the file keeps its last good objects and nothing is
/// removed anywhere, as for a broken file.
#[derive(Debug)]
pub struct Settle {
    delay: std::time::Duration,
    /// Each file's content at the last read (`None`: absent) and when that
    /// content was first seen.
    seen: BTreeMap<PathBuf, (Option<String>, std::time::Instant)>,
}

impl Settle {
    pub fn new(delay: std::time::Duration) -> Settle {
        Settle {
            delay,
            seen: BTreeMap::new(),
        }
    }

    /// The files of `contents` (and the files gone since the last read)
    /// whose state is younger than the delay at `now`.
    pub fn unsettled(&mut self, contents: &BTreeMap<PathBuf, String>, now: std::time::Instant) -> BTreeSet<PathBuf> {
        let mut unsettled = BTreeSet::new();
        for (file, text) in contents {
            // A text file ends with a line break; one that does not is
            // most likely still being written, and waits ten times longer
            // (a tool that never writes the last break is still served).
            let delay = if text.is_empty() || text.ends_with('\n') {
                self.delay
            } else {
                self.delay * UNTERMINATED_FACTOR
            };
            match self.seen.get(file) {
                Some((Some(seen), since)) if seen == text => {
                    if now.saturating_duration_since(*since) < delay {
                        unsettled.insert(file.clone());
                    }
                }
                _ => {
                    self.seen.insert(file.clone(), (Some(text.clone()), now));
                    if !self.delay.is_zero() {
                        unsettled.insert(file.clone());
                    }
                }
            }
        }
        self.seen.retain(|file, (content, since)| {
            if contents.contains_key(file) {
                return true;
            }
            if content.is_some() {
                // Just gone: it may be an editor's delete-then-write.
                *content = None;
                *since = now;
            }
            if now.saturating_duration_since(*since) < self.delay {
                unsettled.insert(file.clone());
                true
            } else {
                false
            }
        });
        unsettled
    }

    /// Marks `file` as written whole with `content` (an atomic rename by
    /// this process): settled at once.
    pub fn trust(&mut self, file: PathBuf, content: String, now: std::time::Instant) {
        let since = now.checked_sub(self.delay).unwrap_or(now);
        self.seen.insert(file, (Some(content), since));
    }

    pub fn delay(&self) -> std::time::Duration {
        self.delay
    }
}
