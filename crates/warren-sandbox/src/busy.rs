//! Which sandbox ids an operation is working on right now.

/// Ids the manager is working on right now (creating, resuming, pausing,
/// cloning, templating): the reconciler leaves them alone.
#[derive(Debug, Default)]
pub(crate) struct Busy(std::sync::Mutex<std::collections::HashMap<String, usize>>);

/// Marks an id busy until dropped.
#[derive(Debug)]
pub struct BusyGuard<'a> {
    busy: &'a Busy,
    id: String,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        let mut busy = self.busy.0.lock().expect("busy lock");
        if let Some(count) = busy.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                busy.remove(&self.id);
            }
        }
    }
}

impl Busy {
    pub(crate) fn mark(&self, id: &str) -> BusyGuard<'_> {
        *self
            .0
            .lock()
            .expect("busy lock")
            .entry(id.to_string())
            .or_insert(0) += 1;
        BusyGuard {
            busy: self,
            id: id.to_string(),
        }
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.0.lock().expect("busy lock").contains_key(id)
    }
}
