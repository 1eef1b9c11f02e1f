use std::fs;

use super::trailer::footer;
use super::*;
use crate::envelope::Envelope;
use crate::queue::meta::MessageMeta;

fn meta_for(id: MessageId) -> MessageMeta {
    let env = Envelope::new(
        Some("a@example.org".parse().unwrap()),
        vec!["b@example.net".parse().unwrap()],
    );
    MessageMeta::new(id, &env, 0)
}

#[test]
fn a_built_message_file_loads_and_a_cut_one_is_unfinished() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let (good, cut) = (MessageId::generate(), MessageId::generate());
    let body = b"Subject: x\r\n\r\nbody\r\n";
    let bytes = message_file_bytes(body, &meta_for(good));
    fs::write(spool.message_path(&good), &bytes).unwrap();
    let bytes = message_file_bytes(body, &meta_for(cut));
    fs::write(spool.message_path(&cut), &bytes[..bytes.len() - 1]).unwrap();
    let report = spool.load().unwrap();
    assert_eq!(report.messages.len(), 1);
    let meta = &report.messages[0];
    assert_eq!((meta.id, meta.size), (good, body.len() as u64));
    assert_eq!((report.removed, report.quarantined), (1, 0));
    let meta = spool.read_meta(&good).unwrap();
    assert_eq!(meta.checksum, Some(crc32fast::hash(body)));
    let read = spool.read_message(&meta, 1000).unwrap().unwrap();
    assert_eq!(read, body);
}

#[test]
fn a_message_file_without_trailer_but_with_metadata_still_loads() {
    // The layout before trailers: the message alone, state in `.meta`.
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let id = MessageId::generate();
    let body = b"Subject: old\r\n\r\nbody\r\n";
    let mut meta = meta_for(id);
    meta.size = body.len() as u64;
    fs::write(spool.message_path(&id), body).unwrap();
    fs::write(spool.meta_path(&id), meta.to_json()).unwrap();
    let report = spool.load().unwrap();
    assert_eq!((report.messages.len(), report.quarantined), (1, 0));
    let meta = spool.read_meta(&id).unwrap();
    assert_eq!(spool.read_message(&meta, 1000).unwrap().unwrap(), body);
    // One byte short of the message is damage.
    fs::write(spool.message_path(&id), &body[1..]).unwrap();
    let report = spool.load().unwrap();
    assert_eq!((report.messages.len(), report.quarantined), (0, 1));
}

#[test]
fn a_footer_naming_more_than_the_file_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let id = MessageId::generate();
    let mut bytes = b"short".to_vec();
    bytes.extend_from_slice(&footer(999));
    fs::write(spool.message_path(&id), &bytes).unwrap();
    let report = spool.load().unwrap();
    assert_eq!((report.messages.len(), report.quarantined), (0, 1));
}
