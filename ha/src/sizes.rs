//! The size of the pair's namespace, agreed when the two data nodes meet
//! (in the manner of DRBD's "last agreed size").
//!
//! Each disk has a **capacity**: its data area, the disk minus the metadata
//! at its end ([`crate::metadata::Layout::data_bytes`]). The pair serves one
//! namespace of the **agreed size**, kept in each disk's metadata once it is
//! known: the smaller capacity of the two disks that first met, and from
//! then on never changed. A disk whose size has not been agreed yet (a blank
//! disk that has not met its peer) records 0.
//!
//! The rules, tried in order (both nodes evaluate them on the two Hellos and
//! reach the same outcome):
//! 1. both disks record an agreed size and they differ: refused (two
//!    namespaces of different sizes were served; neither may change under
//!    its hosts);
//! 2. one or both record an agreed size: that is the pair's size;
//! 3. neither does (two blank disks meeting for the first time): the smaller
//!    capacity;
//! 4. a disk whose capacity is smaller than the pair's size is refused: the
//!    namespace the hosts see never shrinks under them, so a smaller
//!    replacement disk cannot join. A larger one joins and serves the pair's
//!    size (the rest of it is unused; the pair never grows).

use core::fmt;

/// What one node tells the other about its disk's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeView {
    /// The disk's data area, in bytes.
    pub capacity: u64,
    /// The agreed namespace size recorded on the disk; 0: not agreed yet.
    pub agreed: u64,
}

/// Which node's disk is too small.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TooSmall {
    Me,
    Peer,
}

/// Why two disks cannot serve one namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeRefusal {
    /// Both disks record an agreed size, and they differ.
    AgreedSizesDiffer,
    /// This disk (or the peer's) is smaller than the pair's size.
    TooSmall(TooSmall),
}

impl SizeRefusal {
    /// The reason printed with the handshake's verdict.
    pub fn reason(self) -> &'static str {
        match self {
            SizeRefusal::AgreedSizesDiffer => "the two nodes served namespaces of different sizes",
            SizeRefusal::TooSmall(TooSmall::Me) => {
                "this node's disk is smaller than the pair's namespace"
            }
            SizeRefusal::TooSmall(TooSmall::Peer) => {
                "the peer's disk is smaller than the pair's namespace"
            }
        }
    }
}

/// The namespace size the two nodes serve, from `me`'s point of view (the
/// outcome is the same from the peer's, with `TooSmall` mirrored).
pub fn agree(me: SizeView, peer: SizeView) -> Result<u64, SizeRefusal> {
    let size = match (me.agreed, peer.agreed) {
        (0, 0) => me.capacity.min(peer.capacity),
        (a, 0) | (0, a) => a,
        (a, b) if a == b => a,
        _ => return Err(SizeRefusal::AgreedSizesDiffer),
    };
    if me.capacity < size {
        return Err(SizeRefusal::TooSmall(TooSmall::Me));
    }
    if peer.capacity < size {
        return Err(SizeRefusal::TooSmall(TooSmall::Peer));
    }
    Ok(size)
}

/// The sizes behind a handshake, printed with a refusal about sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    pub mine: SizeView,
    pub peer: SizeView,
}

impl fmt::Display for Sizes {
    /// `data area <N> bytes here (namespace <M>|not agreed), <N> bytes on the peer (…)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let agreed = |f: &mut fmt::Formatter<'_>, a: u64| {
            if a == 0 {
                f.write_str("no namespace size agreed yet")
            } else {
                write!(f, "namespace {a} bytes")
            }
        };
        write!(f, "disk data area {} bytes here (", self.mine.capacity)?;
        agreed(f, self.mine.agreed)?;
        write!(f, "), {} bytes on the peer (", self.peer.capacity)?;
        agreed(f, self.peer.agreed)?;
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(capacity: u64, agreed: u64) -> SizeView {
        SizeView { capacity, agreed }
    }

    fn mirror(r: Result<u64, SizeRefusal>) -> Result<u64, SizeRefusal> {
        match r {
            Err(SizeRefusal::TooSmall(TooSmall::Me)) => Err(SizeRefusal::TooSmall(TooSmall::Peer)),
            Err(SizeRefusal::TooSmall(TooSmall::Peer)) => Err(SizeRefusal::TooSmall(TooSmall::Me)),
            r => r,
        }
    }

    #[test]
    fn the_table() {
        const G: u64 = 1 << 30;
        let cases = [
            // Two blank disks: the smaller capacity.
            (v(G, 0), v(2 * G, 0), Ok(G)),
            (v(2 * G, 0), v(G, 0), Ok(G)),
            (v(G, 0), v(G, 0), Ok(G)),
            // A larger replacement takes the pair's size.
            (v(2 * G, 0), v(G, G), Ok(G)),
            // A smaller one is refused, whichever side it is on.
            (
                v(G - 4096, 0),
                v(G, G),
                Err(SizeRefusal::TooSmall(TooSmall::Me)),
            ),
            (
                v(G, G),
                v(G - 4096, 0),
                Err(SizeRefusal::TooSmall(TooSmall::Peer)),
            ),
            // A pair that met keeps its size, even on larger disks.
            (v(2 * G, G), v(3 * G, G), Ok(G)),
            // Two disks that served different sizes never pair.
            (
                v(2 * G, G),
                v(2 * G, 2 * G),
                Err(SizeRefusal::AgreedSizesDiffer),
            ),
            // A disk smaller than the size it records itself (cannot be
            // written by this crate, but is refused if read).
            (
                v(G, 2 * G),
                v(4 * G, 0),
                Err(SizeRefusal::TooSmall(TooSmall::Me)),
            ),
        ];
        for (me, peer, want) in cases {
            assert_eq!(agree(me, peer), want, "{me:?} {peer:?}");
            assert_eq!(agree(peer, me), mirror(want), "mirror of {me:?} {peer:?}");
        }
    }

    #[test]
    fn the_console_line_names_both_sizes() {
        let s = Sizes {
            mine: v(4096 * 10, 0),
            peer: v(4096 * 20, 4096 * 20),
        };
        assert_eq!(
            s.to_string(),
            "disk data area 40960 bytes here (no namespace size agreed yet), 81920 bytes on the peer (namespace 81920 bytes)"
        );
    }
}
