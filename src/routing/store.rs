//! The live routing table behind an `ArcSwap`: many lock-free readers, one writer at a time.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use super::RoutingTable;

/// Holds the live table. Readers `load()` without locking; a swap never waits for readers,
/// and a reader keeps the snapshot it loaded until it drops it.
pub struct TableStore {
    live: ArcSwap<RoutingTable>,
}

impl Default for TableStore {
    fn default() -> Self {
        TableStore {
            live: ArcSwap::from_pointee(RoutingTable::default()),
        }
    }
}

impl TableStore {
    /// The live table, for a short read (never hold the guard across an await).
    pub fn load(&self) -> Guard<Arc<RoutingTable>> {
        self.live.load()
    }

    /// The live table as an owned `Arc` (for compile, admin and tests).
    pub fn snapshot(&self) -> Arc<RoutingTable> {
        self.live.load_full()
    }

    /// Publishes a new table and returns the one it replaced.
    pub fn swap(&self, table: Arc<RoutingTable>) -> Arc<RoutingTable> {
        self.live.swap(table)
    }
}
