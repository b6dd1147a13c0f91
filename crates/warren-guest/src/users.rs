//! Users and groups of the sandbox, read straight from `/etc/passwd` and
//! `/etc/group`.
//!
//! Why not `getpwnam(3)` and friends: the guest binary is linked statically
//! against glibc, and glibc's NSS loads `libnss_*.so` modules with `dlopen`
//! at run time. In a static binary that either fails or loads shared
//! objects of a *different* glibc from the sandbox's root image, which can
//! crash the agent. The sandbox images only use local files, so parsing the
//! two files ourselves is both safe and complete.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// One `/etc/passwd` entry: what the agent needs to run a process as a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name (`USER`, `LOGNAME`).
    pub name: String,
    /// Numeric user id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory (`HOME`, default working directory).
    pub home: String,
    /// Login shell (`SHELL`).
    pub shell: String,
}

impl User {
    /// The root user as assumed when `/etc/passwd` is missing or has no
    /// root entry (minimal images), so that running as root always works.
    pub fn fallback_root() -> Self {
        Self {
            name: "root".into(),
            uid: 0,
            gid: 0,
            home: "/root".into(),
            shell: "/bin/sh".into(),
        }
    }
}

/// One `/etc/group` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Group name.
    pub name: String,
    /// Numeric group id.
    pub gid: u32,
    /// Names of supplementary members.
    pub members: Vec<String>,
}

/// The colon-separated records of a passwd-style file that have exactly
/// `fields` fields and a name; comments, blank and malformed lines are
/// skipped rather than failing the whole file, like libc.
fn records(text: &str, fields: usize) -> impl Iterator<Item = Vec<&str>> {
    text.lines().filter_map(move |line| {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let record: Vec<&str> = line.split(':').collect();
        (record.len() == fields && !record[0].is_empty()).then_some(record)
    })
}

/// Parses `/etc/passwd` text. Malformed lines (wrong field count, non
/// numeric ids) are skipped rather than failing the whole file, like libc.
pub fn parse_passwd(text: &str) -> Vec<User> {
    records(text, 7)
        .filter_map(|fields| {
            Some(User {
                name: fields[0].to_string(),
                uid: fields[2].parse().ok()?,
                gid: fields[3].parse().ok()?,
                home: fields[5].to_string(),
                shell: fields[6].to_string(),
            })
        })
        .collect()
}

/// Parses `/etc/group` text; malformed lines are skipped.
pub fn parse_group(text: &str) -> Vec<Group> {
    records(text, 4)
        .filter_map(|fields| {
            Some(Group {
                name: fields[0].to_string(),
                gid: fields[2].parse().ok()?,
                members: fields[3]
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(String::from)
                    .collect(),
            })
        })
        .collect()
}

/// A parsed snapshot of the user and group databases.
#[derive(Debug, Default)]
pub struct UserDb {
    users: Vec<User>,
    groups: Vec<Group>,
    user_names: HashMap<u32, String>,
    group_names: HashMap<u32, String>,
}

impl UserDb {
    /// Builds the database from parsed entries. The first entry wins when
    /// ids repeat, as with libc's linear scan.
    pub fn new(users: Vec<User>, groups: Vec<Group>) -> Self {
        let mut user_names = HashMap::new();
        for user in &users {
            user_names
                .entry(user.uid)
                .or_insert_with(|| user.name.clone());
        }
        let mut group_names = HashMap::new();
        for group in &groups {
            group_names
                .entry(group.gid)
                .or_insert_with(|| group.name.clone());
        }
        Self {
            users,
            groups,
            user_names,
            group_names,
        }
    }

    /// Reads `etc/passwd` and `etc/group` under `root`; missing files give
    /// an empty database (a minimal image may have neither).
    pub fn load(root: &Path) -> Self {
        let read = |name: &str| std::fs::read_to_string(root.join(name)).unwrap_or_default();
        Self::new(
            parse_passwd(&read("etc/passwd")),
            parse_group(&read("etc/group")),
        )
    }

    /// Resolves what a caller wrote as `user`: empty means root, a name is
    /// looked up, a number is a uid (which need not have an entry: then it
    /// runs with gid = uid, home `/`, like container runtimes allow).
    pub fn resolve(&self, spec: &str) -> Option<User> {
        let spec = spec.trim();
        if spec.is_empty() || spec == "root" {
            return Some(
                self.users
                    .iter()
                    .find(|u| u.name == "root")
                    .cloned()
                    .unwrap_or_else(User::fallback_root),
            );
        }
        if let Some(user) = self.users.iter().find(|u| u.name == spec) {
            return Some(user.clone());
        }
        let uid: u32 = spec.parse().ok()?;
        if let Some(user) = self.users.iter().find(|u| u.uid == uid) {
            return Some(user.clone());
        }
        if uid == 0 {
            return Some(User::fallback_root());
        }
        Some(User {
            name: uid.to_string(),
            uid,
            gid: uid,
            home: "/".into(),
            shell: "/bin/sh".into(),
        })
    }

    /// All group ids of `user`: its primary group, then every group that
    /// lists it as a member (what `initgroups(3)` computes).
    pub fn group_ids(&self, user: &User) -> Vec<u32> {
        let mut gids = vec![user.gid];
        for group in &self.groups {
            if group.members.contains(&user.name) && !gids.contains(&group.gid) {
                gids.push(group.gid);
            }
        }
        gids
    }

    /// Name of a uid, if `/etc/passwd` has one.
    pub fn user_name(&self, uid: u32) -> Option<&str> {
        self.user_names.get(&uid).map(String::as_str)
    }

    /// Name of a gid, if `/etc/group` has one.
    pub fn group_name(&self, gid: u32) -> Option<&str> {
        self.group_names.get(&gid).map(String::as_str)
    }
}

/// What identifies a version of the two files: if neither changed, the
/// cached parse is still right.
type Stamp = [Option<(SystemTime, u64)>; 2];

/// A cache of [`UserDb`] that re-reads the files when they change (a
/// process in the sandbox may run `useradd` at any time), checked with two
/// `stat` calls per snapshot instead of a parse per file listing entry.
#[derive(Debug)]
pub struct UserCache {
    root: PathBuf,
    cached: Mutex<Option<(Stamp, Arc<UserDb>)>>,
}

impl UserCache {
    /// A cache of the databases under `root` (`/` in production).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            cached: Mutex::new(None),
        }
    }

    fn stamp(&self) -> Stamp {
        let one = |name: &str| {
            let meta = std::fs::metadata(self.root.join(name)).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        };
        [one("etc/passwd"), one("etc/group")]
    }

    /// The current databases (re-read if either file changed).
    pub fn snapshot(&self) -> Arc<UserDb> {
        let stamp = self.stamp();
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((old, db)) = cached.as_ref()
            && *old == stamp
        {
            return db.clone();
        }
        let db = Arc::new(UserDb::load(&self.root));
        *cached = Some((stamp, db.clone()));
        db
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        # comment\n\
        \n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        broken line\n\
        bad:x:notanumber:1::/:/bin/sh\n\
        alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash\r\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";

    const GROUP: &str = "root:x:0:\n\
        sudo:x:27:alice, bob\n\
        alice:x:1000:\n\
        docker:x:999:bob,alice\n\
        nogroup:x:65534:\n\
        junk\n";

    fn db() -> UserDb {
        UserDb::new(parse_passwd(PASSWD), parse_group(GROUP))
    }

    #[test]
    fn parses_passwd_and_skips_junk() {
        let users = parse_passwd(PASSWD);
        let names: Vec<_> = users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["root", "daemon", "alice", "nobody"]);
        assert_eq!(users[2].home, "/home/alice");
        assert_eq!(users[2].shell, "/bin/bash");
        assert_eq!(users[3].uid, 65534);
    }

    #[test]
    fn parses_groups_with_members() {
        let groups = parse_group(GROUP);
        assert_eq!(groups.len(), 5);
        assert_eq!(groups[1].members, ["alice", "bob"]);
        assert!(groups[0].members.is_empty());
    }

    #[test]
    fn resolves_names_uids_and_root() {
        let db = db();
        assert_eq!(db.resolve("").unwrap().uid, 0);
        assert_eq!(db.resolve("root").unwrap().home, "/root");
        assert_eq!(db.resolve("alice").unwrap().uid, 1000);
        assert_eq!(db.resolve("1000").unwrap().name, "alice");
        let anon = db.resolve("4242").unwrap();
        assert_eq!((anon.uid, anon.gid, anon.home.as_str()), (4242, 4242, "/"));
        assert_eq!(db.resolve("mallory"), None);
        // No passwd at all: root still works.
        let empty = UserDb::default();
        assert_eq!(empty.resolve("").unwrap(), User::fallback_root());
        assert_eq!(empty.resolve("0").unwrap(), User::fallback_root());
    }

    #[test]
    fn computes_supplementary_groups() {
        let db = db();
        let alice = db.resolve("alice").unwrap();
        assert_eq!(db.group_ids(&alice), [1000, 27, 999]);
        let root = db.resolve("root").unwrap();
        assert_eq!(db.group_ids(&root), [0]);
    }

    #[test]
    fn names_ids() {
        let db = db();
        assert_eq!(db.user_name(1000), Some("alice"));
        assert_eq!(db.group_name(27), Some("sudo"));
        assert_eq!(db.user_name(5), None);
    }

    #[test]
    fn cache_reloads_when_files_change() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        let cache = UserCache::new(dir.path());
        assert!(cache.snapshot().resolve("alice").is_none());
        std::fs::write(dir.path().join("etc/passwd"), PASSWD).unwrap();
        assert_eq!(cache.snapshot().resolve("alice").unwrap().uid, 1000);
    }
}
