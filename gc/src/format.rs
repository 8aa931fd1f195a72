//! The formats of the values this crate keeps in `_sys`: sealed like every persisted value of
//! the store (`version u8 | postcard body | crc32 u32 LE`, see [`metakv_store::codec`]), so a
//! damaged or foreign value is refused, never misread.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Format of a sealed [`JobRecord`](crate::JobRecord). Changing its fields is a format change:
/// bump it, and keep reading the old one or refuse it by name.
pub const JOB_RECORD_FORMAT: u8 = 1;
/// Format of a sealed [`HibernationRecord`](crate::hibernate::HibernationRecord).
pub const HIBERNATION_RECORD_FORMAT: u8 = 1;

/// A value in `_sys` that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} is unreadable ({reason}): damaged, or written by a metakv whose format this one does not read"
)]
#[non_exhaustive]
pub struct FormatError {
    /// What the value should have been ("GC job record", "hibernation record").
    pub what: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

pub(crate) fn seal<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    metakv_store::codec::seal(version, value)
}

pub(crate) fn unseal<T: Serialize + DeserializeOwned>(
    what: &'static str,
    version: u8,
    bytes: &[u8],
) -> Result<T, FormatError> {
    metakv_store::codec::unseal(version, bytes).map_err(|reason| FormatError { what, reason })
}
