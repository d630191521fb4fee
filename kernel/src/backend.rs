//! Where the NVMe service's block requests go: a block backend. There are
//! two — the local disks of a stand-alone node ([`LocalDisks`]) and the HA
//! pair ([`crate::pair::DataPair`]) — and both hand their completions back
//! the same way, through [`BlockBackend::take_completions`].

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use tandem_nvme::{BlockError, BlockOutcome, BlockRequest, RequestId};

use crate::block::{BlockQueue, DiskOp, DiskResult, Tag};

/// The NVMe service's name for one of its connections.
pub type ConnectionId = u64;

/// A finished block request, for the connection that asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub connection: ConnectionId,
    pub request: RequestId,
    pub outcome: BlockOutcome,
}

/// Carries out the hosts' block requests on the disks `D`.
pub trait BlockBackend<D: BlockQueue> {
    /// Takes a block request of `connection`. Its completion comes back from
    /// [`BlockBackend::take_completions`], possibly at once (a refusal).
    fn submit(
        &mut self,
        disks: &mut [D],
        connection: ConnectionId,
        request: BlockRequest,
        now_micros: u64,
    );
    /// The requests finished since the last call (after starting what was
    /// submitted, where the backend's own work allows).
    fn take_completions(&mut self, disks: &mut [D]) -> Vec<Completion>;
}

/// A stand-alone node's backend: namespace `n` is disk `n - 1`.
#[derive(Default)]
pub struct LocalDisks {
    /// Disk request tag → the request it carries out.
    pending: BTreeMap<Tag, (ConnectionId, RequestId)>,
    next_tag: Tag,
    /// Requests refused without reaching a disk.
    refused: Vec<Completion>,
}

impl LocalDisks {
    pub fn new() -> Self {
        Self::default()
    }
}

impl<D: BlockQueue> BlockBackend<D> for LocalDisks {
    fn submit(
        &mut self,
        disks: &mut [D],
        connection: ConnectionId,
        request: BlockRequest,
        _now_micros: u64,
    ) {
        let Some(disk) = (request.nsid as usize)
            .checked_sub(1)
            .and_then(|index| disks.get_mut(index))
        else {
            let outcome = BlockOutcome::Failed(BlockError::NotReady);
            self.refused.push(Completion {
                connection,
                request: request.id,
                outcome,
            });
            return;
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        self.pending.insert(tag, (connection, request.id));
        disk.submit(tag, DiskOp::from_block_op(request.op));
    }

    fn take_completions(&mut self, disks: &mut [D]) -> Vec<Completion> {
        let mut completions = core::mem::take(&mut self.refused);
        for (index, disk) in disks.iter_mut().enumerate() {
            for (tag, result) in disk.poll() {
                let Some((connection, request)) = self.pending.remove(&tag) else {
                    continue;
                };
                let outcome = match result {
                    DiskResult::Done => BlockOutcome::Done,
                    DiskResult::ReadData(data) => BlockOutcome::ReadData(data),
                    DiskResult::Failed(error) => {
                        log::warn!("disk{index}: request failed: {error:?}");
                        BlockOutcome::Failed(BlockError::Media)
                    }
                };
                completions.push(Completion {
                    connection,
                    request,
                    outcome,
                });
            }
        }
        completions
    }
}
