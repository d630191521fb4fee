//! Control datagrams as a member receives them, on arbitrary bytes: the
//! version-2 structure check ([`Sealed::parse`]), the authenticated channel
//! ([`ControlChannel::open`]: source, receiver, MAC, session, replay) and the
//! version-1 message decoder behind it ([`Datagram::parse`]). Never panics;
//! bytes made without the pair key never get through the channel; a genuine
//! datagram gets through once, unchanged, and neither its replay nor any
//! altered copy does; whatever decodes emits to bytes that decode to the
//! same datagram.
//!
//! The first byte chooses how the rest is used: as the bytes on the wire,
//! or as a version-1 datagram (header fields and payload; magic, version,
//! length and checksum filled in) sealed with the pair key, so that every
//! input reaches the message decoders.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use tandem_ha::NodeId;
use tandem_ha::auth::channel::{ControlChannel, DropReason};
use tandem_ha::types::LinkId;
use tandem_ha::wire::control::Datagram;
use tandem_ha::wire::sealed::{AuthFields, Sealed, seal};

/// The datagram `bytes` decode to, after checking that it emits to bytes
/// that decode to the same.
fn decoded(bytes: &[u8]) -> Option<Datagram> {
    let datagram = Datagram::parse(bytes).ok()?;
    let again = Datagram::parse(&datagram.emit()).expect("an emitted datagram decodes");
    assert_eq!(again, datagram);
    Some(datagram)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let keys = common::keys();
    if mode & 1 == 0 {
        let _ = Sealed::parse(rest);
        let _ = decoded(rest);
        for (me, from) in [
            (NodeId::A, NodeId::B),
            (NodeId::B, NodeId::Witness),
            (NodeId::Witness, NodeId::A),
        ] {
            let mut channel = ControlChannel::new(me, &keys, 1);
            for link in 0..2 {
                assert!(
                    channel.open(LinkId(link), Some(from), rest).is_err(),
                    "bytes without the key were accepted"
                );
            }
        }
        return;
    }
    let plain = common::control_datagram(rest);
    let Some(datagram) = decoded(&plain) else {
        return;
    };
    let me = if datagram.sender == NodeId::A {
        NodeId::B
    } else {
        NodeId::A
    };
    let mut channel = ControlChannel::new(me, &keys, 1);
    let auth = AuthFields {
        receiver: me,
        nonce: 7,
        echo: channel.session_nonce(),
        seq: 1,
    };
    let sealed = seal(&plain, &auth, &keys.control).expect("a valid datagram seals");
    let link = LinkId(datagram.link.0);
    let opened = channel
        .open(link, Some(datagram.sender), &sealed)
        .expect("a genuine datagram opens");
    assert_eq!(decoded(&opened), Some(datagram));
    assert_eq!(
        channel.open(link, Some(datagram.sender), &sealed),
        Err(DropReason::Replay)
    );
    // Any one byte changed (where the input says) is refused.
    let mut altered = sealed.clone();
    let at = usize::from(mode >> 1) % altered.len();
    altered[at] ^= 0x80;
    let mut fresh = ControlChannel::new(me, &keys, 1);
    assert!(
        fresh.open(link, Some(datagram.sender), &altered).is_err(),
        "an altered datagram was accepted"
    );
});
