//! The DH-HMAC-CHAP message decoder and one queue's transaction on arbitrary
//! input: never panics. The input is a sequence of steps: a length byte (0 =
//! an Authentication Receive, else that many bytes as an Authentication Send
//! payload), so Negotiate/Reply/Success2/Failure2 in any order and shape
//! reach the state machine, with a DH group and bidirectional set up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_nvme::auth::message::HostMessage;
use tandem_nvme::auth::{
    AuthContext, DhGroup, DhchapHost, DhchapSecret, Drbg, HashId, Preferences, QueueAuth,
};

const HOST: &str = "DHHC-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";
const CTRL: &str = "DHHC-1:01:AQECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8ge/xg:";

fuzz_target!(|data: &[u8]| {
    let _ = HostMessage::parse(data);
    let host = DhchapHost {
        host_nqn: "nqn.2014-08.org.nvmexpress:uuid:fuzz".into(),
        host_secret: DhchapSecret::parse(HOST).unwrap(),
        ctrl_secret: Some(DhchapSecret::parse(CTRL).unwrap()),
    };
    // ffdhe2048 first (cheap enough per input), null for hosts without DH.
    let prefs = Preferences {
        hashes: vec![HashId::Sha256, HashId::Sha512],
        groups: vec![DhGroup::Ffdhe2048, DhGroup::Null],
    };
    let ctx = AuthContext {
        host: &host,
        subsys_nqn: "nqn.2026-11.io.tandem:fuzz",
        prefs: &prefs,
    };
    let mut rng = Drbg::new(b"fuzz");
    let mut queue = QueueAuth::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        if len == 0 {
            let (message, _) = queue.on_receive(&ctx, &mut rng);
            assert!(message.len() <= 16 + 64 + 1024);
            rest = tail;
        } else {
            let n = (len as usize * 8).min(tail.len());
            let _ = queue.on_send(&tail[..n], &ctx);
            rest = &tail[n..];
        }
    }
});
