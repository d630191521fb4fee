//! Small value types shared by the wire formats, the metadata and the state
//! machines.

use core::fmt;

/// A member of the pair. The numeric codes are part of the wire and disk
/// formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeId {
    A = 0,
    B = 1,
    Witness = 2,
}

/// Code used on the wire and on disk for "no node".
pub const NO_NODE: u8 = 0xff;

impl NodeId {
    pub const ALL: [NodeId; 3] = [NodeId::A, NodeId::B, NodeId::Witness];

    pub fn from_u8(v: u8) -> Option<NodeId> {
        match v {
            0 => Some(NodeId::A),
            1 => Some(NodeId::B),
            2 => Some(NodeId::Witness),
            _ => None,
        }
    }
    pub fn to_u8(self) -> u8 {
        self as u8
    }
    pub fn index(self) -> usize {
        self as usize
    }
    pub fn is_data_node(self) -> bool {
        !matches!(self, NodeId::Witness)
    }
    /// The other data node. The witness has no peer; it maps to itself.
    pub fn peer(self) -> NodeId {
        match self {
            NodeId::A => NodeId::B,
            NodeId::B => NodeId::A,
            NodeId::Witness => NodeId::Witness,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            NodeId::A => "a",
            NodeId::B => "b",
            NodeId::Witness => "witness",
        }
    }
    /// Parses the console/config spelling (`a`, `b`, `witness`).
    pub fn from_name(s: &str) -> Option<NodeId> {
        match s {
            "a" => Some(NodeId::A),
            "b" => Some(NodeId::B),
            "witness" => Some(NodeId::Witness),
            _ => None,
        }
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

pub(crate) fn opt_node_to_u8(n: Option<NodeId>) -> u8 {
    n.map_or(NO_NODE, NodeId::to_u8)
}

/// Decodes an optional node code; `Err(())` for a code that is neither a node
/// nor [`NO_NODE`].
pub(crate) fn opt_node_from_u8(v: u8) -> Result<Option<NodeId>, ()> {
    if v == NO_NODE {
        Ok(None)
    } else {
        NodeId::from_u8(v).map(Some).ok_or(())
    }
}

/// One network path between members (index into the configured links:
/// by convention 0 = replication link, 1 = front-end network).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkId(pub u8);

/// Most links a node may have; heartbeats go on every one of them.
pub const MAX_LINKS: usize = 4;

/// The role of a member, for the whole node (all namespaces fail over
/// together).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Serves host I/O (while it holds a lease).
    Primary = 0,
    /// Receives replicated writes; serves no host I/O.
    Secondary = 1,
    /// Serves nothing: lost its lease, or fenced by the operator.
    Fenced = 2,
    /// The tie-breaker member (no data).
    Witness = 3,
}

impl Role {
    pub fn from_u8(v: u8) -> Option<Role> {
        match v {
            0 => Some(Role::Primary),
            1 => Some(Role::Secondary),
            2 => Some(Role::Fenced),
            3 => Some(Role::Witness),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
            Role::Fenced => "fenced",
            Role::Witness => "witness",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The state of a node's copy of the data, as DRBD names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataState {
    /// Holds every acknowledged write of the latest epoch it knows.
    UpToDate = 0,
    /// A consistent but old copy: writes were acknowledged without it.
    Outdated = 1,
    /// Partially resynchronised (or never synchronised): unusable alone.
    Inconsistent = 2,
}

impl DataState {
    pub fn from_u8(v: u8) -> Option<DataState> {
        match v {
            0 => Some(DataState::UpToDate),
            1 => Some(DataState::Outdated),
            2 => Some(DataState::Inconsistent),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DataState::UpToDate => "UpToDate",
            DataState::Outdated => "Outdated",
            DataState::Inconsistent => "Inconsistent",
        }
    }
}

impl fmt::Display for DataState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The configuration committed for an epoch by a majority: who is primary and
/// which data node (if any) was recorded Outdated. Every change of either field
/// happens in a new epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EpochRecord {
    pub epoch: u64,
    pub primary: Option<NodeId>,
    pub outdated: Option<NodeId>,
}

impl EpochRecord {
    /// The record of a freshly formatted pair: epoch 0, no primary.
    pub const INITIAL: EpochRecord = EpochRecord {
        epoch: 0,
        primary: None,
        outdated: None,
    };
}

/// The ANA state a node must report for its (single) ANA group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AnaState {
    Optimized,
    Inaccessible,
    /// A transition is under way (election, switchover): I/O fails with the
    /// ANA Transition path status so the host retries.
    Change,
}

impl AnaState {
    pub fn name(self) -> &'static str {
        match self {
            AnaState::Optimized => "optimized",
            AnaState::Inaccessible => "inaccessible",
            AnaState::Change => "change",
        }
    }
}
