//! Connection lists as a data node receives them, on arbitrary bytes: the
//! version-2 structure check, the authenticated channel and the version-1
//! list decoder ([`ConnectionList::parse`]) behind it. Never panics; bytes
//! made without the pair key never get through; a genuine list gets through
//! once, unchanged, and neither its replay nor any altered copy does;
//! whatever decodes emits to bytes that decode to the same list.
//!
//! The first byte chooses how the rest is used: as the bytes on the wire,
//! or as a version-1 list (sender, boot, sequence, entries; magic, version,
//! count and checksum filled in) sealed with the pair key.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use tandem_ha::NodeId;
use tandem_ha::auth::channel::{ControlChannel, DropReason};
use tandem_ha::types::LinkId;
use tandem_ha::wire::connections::ConnectionList;
use tandem_ha::wire::sealed::{AuthFields, Sealed, seal};

fn decoded(bytes: &[u8]) -> Option<ConnectionList> {
    let list = ConnectionList::parse(bytes).ok()?;
    let again = ConnectionList::parse(&list.emit()).expect("an emitted list decodes");
    assert_eq!(again, list);
    Some(list)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let keys = common::keys();
    if mode & 1 == 0 {
        let _ = Sealed::parse(rest);
        let _ = decoded(rest);
        let mut channel = ControlChannel::new(NodeId::A, &keys, 1);
        assert!(
            channel.open(LinkId(1), Some(NodeId::B), rest).is_err(),
            "bytes without the key were accepted"
        );
        return;
    }
    let plain = common::connection_list(rest);
    let Some(list) = decoded(&plain) else { return };
    let me = if list.sender == NodeId::A {
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
    let sealed = seal(&plain, &auth, &keys.control).expect("a valid list seals");
    let opened = channel
        .open(LinkId(1), Some(list.sender), &sealed)
        .expect("a genuine list opens");
    assert_eq!(decoded(&opened), Some(list.clone()));
    assert_eq!(
        channel.open(LinkId(1), Some(list.sender), &sealed),
        Err(DropReason::Replay)
    );
    // Any one byte changed (where the input says) is refused.
    let mut altered = sealed.clone();
    let at = usize::from(mode >> 1) % altered.len();
    altered[at] ^= 0x80;
    let mut fresh = ControlChannel::new(me, &keys, 1);
    assert!(
        fresh.open(LinkId(1), Some(list.sender), &altered).is_err(),
        "an altered list was accepted"
    );
});
