//! The one lock helper, below every other module of the crate.

/// A mutex's guard, also after a panic elsewhere poisoned it: the state behind every lock of
/// this crate stays usable (each update is whole under the lock).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
