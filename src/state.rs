//! The process-wide state shared by every connection: the current snapshot.

use arc_swap::ArcSwap;

use crate::stack::Snapshot;

/// What every connection shares. Requests load the snapshot once (one atomic operation, no
/// lock) and keep it for their whole life; a reload stores a new one.
pub(crate) struct State {
    pub(crate) snapshot: ArcSwap<Snapshot>,
}
