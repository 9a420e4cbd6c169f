//! A raw output buffer that parallel tasks write in disjoint cells: the bf16 and AMX GEMMs hand
//! one to every rayon task, and each call site's SAFETY note says why its tasks' cells differ.

pub(crate) struct SharedOut<T>(pub *mut T);
// SAFETY: tasks holding it write disjoint cells (argued where it is used).
unsafe impl<T> Send for SharedOut<T> {}
unsafe impl<T> Sync for SharedOut<T> {}

impl<T> SharedOut<T> {
    pub fn get(&self) -> *mut T {
        self.0
    }
}
