//! The PDU decoder on arbitrary bytes: never panics; whatever decodes
//! re-encodes to a PDU that decodes to the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_nvme::Crc32c;
use tandem_nvme::wire::Repr;
use tandem_nvme::wire::pdu;

fuzz_target!(|data: &[u8]| {
    let crc = Crc32c::default();
    let _ = Repr::check_common(data);
    if let Ok(p) = pdu::decode(data, &crc) {
        let mut out = Vec::new();
        pdu::encode(
            &p.repr,
            p.data,
            p.layout.header_digest,
            p.layout.data_digest,
            &crc,
            &mut out,
        );
        let again = pdu::decode(&out, &crc).expect("re-encoded PDU decodes");
        assert_eq!(again.repr, p.repr);
        assert_eq!(again.data, p.data);
    }
});
