//! Slot claims: which warren owns which slot, machine-wide, so several
//! warren services (or test runs) on one host never pick the same
//! namespace and addresses. A claim is a file `slot-N` in the claims
//! directory (default `/run/warren/net`: like the namespaces themselves it
//! is gone after a reboot), published by a hard link so taking a slot is
//! atomic: a crash leaves either no claim or a whole one.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::layout::Slot;

/// The default claims directory.
pub const DEFAULT_CLAIMS_DIR: &str = "/run/warren/net";

/// Who holds a slot: the data directory of the warren that took it and
/// the sandbox it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The owning service's data directory (its identity on this host).
    pub owner: String,
    /// The sandbox the slot's network is for.
    pub sandbox: String,
}

/// Why a claim could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Filesystem trouble in the claims directory.
    #[error("slot claims in {}", dir.display())]
    Io {
        /// The claims directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Every slot of the range is taken.
    #[error(
        "all {slots} sandbox network slots are in use; kill sandboxes or give a larger --net-range"
    )]
    Exhausted {
        /// How many there are.
        slots: u32,
    },
}

/// The claims directory of one host.
#[derive(Debug, Clone)]
pub struct Claims {
    dir: PathBuf,
}

impl Claims {
    /// Claims kept in `dir` (created when first needed).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Claims { dir: dir.into() }
    }

    fn io(&self, source: io::Error) -> ClaimError {
        ClaimError::Io {
            dir: self.dir.clone(),
            source,
        }
    }

    fn path(&self, slot: Slot) -> PathBuf {
        self.dir.join(format!("slot-{slot}"))
    }

    /// Takes the lowest free slot in `1..=slots` for `claim`.
    pub fn take(&self, slots: u32, claim: &Claim) -> Result<Slot, ClaimError> {
        fs::create_dir_all(&self.dir).map_err(|e| self.io(e))?;
        let taken: std::collections::BTreeSet<u32> =
            self.list()?.into_iter().map(|(s, _)| s.0).collect();
        let tmp = self
            .dir
            .join(format!(".claim-{}-{}", std::process::id(), unique()));
        write_synced(&tmp, claim).map_err(|e| self.io(e))?;
        let result = (1..=slots)
            .filter(|n| !taken.contains(n))
            .find_map(|n| match fs::hard_link(&tmp, self.path(Slot(n))) {
                Ok(()) => Some(Ok(Slot(n))),
                // Someone else took it since the listing: try the next.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => None,
                Err(e) => Some(Err(self.io(e))),
            })
            .unwrap_or(Err(ClaimError::Exhausted { slots }));
        let _ = fs::remove_file(&tmp);
        if result.is_ok() {
            sync_dir(&self.dir).map_err(|e| self.io(e))?;
        }
        result
    }

    /// Takes a specific slot (re-adopting after a restart); `false` when
    /// another claim holds it.
    pub fn take_exact(&self, slot: Slot, claim: &Claim) -> Result<bool, ClaimError> {
        fs::create_dir_all(&self.dir).map_err(|e| self.io(e))?;
        if let Some(held) = self.get(slot)? {
            return Ok(held == *claim);
        }
        let tmp = self
            .dir
            .join(format!(".claim-{}-{}", std::process::id(), unique()));
        write_synced(&tmp, claim).map_err(|e| self.io(e))?;
        let linked = fs::hard_link(&tmp, self.path(slot));
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(&self.dir).map_err(|e| self.io(e))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Ok(self.get(slot)?.as_ref() == Some(claim))
            }
            Err(e) => Err(self.io(e)),
        }
    }

    /// Who holds `slot`, if anyone.
    pub fn get(&self, slot: Slot) -> Result<Option<Claim>, ClaimError> {
        match fs::read_to_string(self.path(slot)) {
            Ok(text) => Ok(Some(parse(&text))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(e)),
        }
    }

    /// Gives `slot` back.
    pub fn release(&self, slot: Slot) -> Result<(), ClaimError> {
        match fs::remove_file(self.path(slot)) {
            Ok(()) => sync_dir(&self.dir).map_err(|e| self.io(e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(e)),
        }
    }

    /// Every claim, lowest slot first.
    pub fn list(&self) -> Result<Vec<(Slot, Claim)>, ClaimError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.io(e))?;
            let name = entry.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_prefix("slot-"))
                .and_then(|n| n.parse().ok())
            else {
                continue;
            };
            if let Some(claim) = self.get(Slot(n))? {
                out.push((Slot(n), claim));
            }
        }
        out.sort_by_key(|(s, _)| *s);
        Ok(out)
    }
}

fn parse(text: &str) -> Claim {
    let mut lines = text.lines();
    Claim {
        owner: lines.next().unwrap_or_default().to_owned(),
        sandbox: lines.next().unwrap_or_default().to_owned(),
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn write_synced(path: &Path, claim: &Claim) -> io::Result<()> {
    let mut f = fs::File::create(path)?;
    writeln!(f, "{}\n{}", claim.owner, claim.sandbox)?;
    f.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(s: &str) -> Claim {
        Claim {
            owner: "/var/lib/warren".into(),
            sandbox: s.into(),
        }
    }

    #[test]
    fn slots_are_taken_lowest_first_and_never_twice() {
        let dir = tempfile::tempdir().unwrap();
        let c = Claims::new(dir.path().join("net"));
        assert_eq!(c.take(3, &claim("a")).unwrap(), Slot(1));
        assert_eq!(c.take(3, &claim("b")).unwrap(), Slot(2));
        assert_eq!(c.take(3, &claim("c")).unwrap(), Slot(3));
        assert!(matches!(
            c.take(3, &claim("d")),
            Err(ClaimError::Exhausted { slots: 3 })
        ));
        c.release(Slot(2)).unwrap();
        assert_eq!(c.take(3, &claim("e")).unwrap(), Slot(2));
        assert_eq!(c.get(Slot(2)).unwrap(), Some(claim("e")));
        let listed: Vec<_> = c
            .list()
            .unwrap()
            .into_iter()
            .map(|(s, c)| (s.0, c.sandbox))
            .collect();
        assert_eq!(
            listed,
            vec![(1, "a".into()), (2, "e".into()), (3, "c".into())]
        );
        // No temp files are left behind.
        assert_eq!(fs::read_dir(dir.path().join("net")).unwrap().count(), 3);
    }

    #[test]
    fn an_exact_slot_is_readopted_only_by_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let c = Claims::new(dir.path());
        assert!(c.take_exact(Slot(7), &claim("a")).unwrap());
        assert!(
            c.take_exact(Slot(7), &claim("a")).unwrap(),
            "same holder: still ours"
        );
        assert!(
            !c.take_exact(Slot(7), &claim("b")).unwrap(),
            "contested: refused"
        );
        c.release(Slot(7)).unwrap();
        c.release(Slot(7)).unwrap();
        assert_eq!(c.get(Slot(7)).unwrap(), None);
    }

    #[test]
    fn concurrent_takers_get_distinct_slots() {
        let dir = tempfile::tempdir().unwrap();
        let c = Claims::new(dir.path());
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let c = c.clone();
                std::thread::spawn(move || c.take(100, &claim(&format!("s{i}"))).unwrap())
            })
            .collect();
        let mut slots: Vec<u32> = handles.into_iter().map(|h| h.join().unwrap().0).collect();
        slots.sort();
        slots.dedup();
        assert_eq!(slots.len(), 8);
    }
}
