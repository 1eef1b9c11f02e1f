use std::fs;

use std::io::Write;

use super::load::LoadSink;
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
    let lock = spool.lock_message(&id).unwrap().unwrap();
    assert_eq!(spool.read_locked(&id, &lock).unwrap().size, meta.size);
    drop(lock);
    // One byte short of the message is damage, found by the attempt that
    // opens the file (the load does not look at it).
    fs::write(spool.message_path(&id), &body[1..]).unwrap();
    let lock = spool.lock_message(&id).unwrap().unwrap();
    match spool.read_locked(&id, &lock) {
        Err(QueueError::Corrupt { reason, .. }) => {
            assert!(reason.contains("too short"), "{reason}")
        }
        other => panic!("a short message file read as {other:?}"),
    }
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

/// The load's sink for the tests: commits `commit` once the listing is
/// done (the load has seen its file, and reads it after), and keeps what
/// the load hands over.
struct Sink<'a> {
    spool: &'a Spool,
    commit: Option<MessageWriter>,
    found: Vec<MessageId>,
}

impl LoadSink for Sink<'_> {
    fn listed(&mut self, n: usize) {
        // The two files of the run before; writes in progress are in
        // `free/` until they are committed.
        assert_eq!(n, 2, "every file in queue/ is listed");
        let w = self.commit.take().unwrap();
        let env = Envelope::new(None, vec!["c@example.net".parse().unwrap()]);
        self.spool.store(w, &env, false).unwrap();
    }

    fn found(&mut self, found: Vec<crate::queue::meta::Queued>, _: usize) -> bool {
        self.found.extend(found.iter().map(|q| q.id));
        true
    }
}

#[test]
fn the_load_never_removes_nor_schedules_a_message_written_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let body = b"Subject: x\r\n\r\nbody\r\n";
    // From the run before: a message queued, and a write it never finished.
    let queued = MessageId::generate();
    fs::write(
        spool.message_path(&queued),
        message_file_bytes(body, &meta_for(queued)),
    )
    .unwrap();
    let cut = MessageId::generate();
    fs::write(spool.message_path(&cut), &body[..]).unwrap();

    spool.begin_load();
    // Mail coming in while the load runs: one still being written (no
    // footer yet, as the unfinished write), one finished after the
    // listing saw its file.
    let mut writing = spool.create_message().unwrap();
    writing.copy_from(&mut &body[..]).unwrap();
    writing.flush().unwrap();
    let mut committed = spool.create_message().unwrap();
    committed.copy_from(&mut &body[..]).unwrap();
    committed.flush().unwrap();
    let committed_id = committed.id();
    let mut sink = Sink {
        spool: &spool,
        commit: Some(committed),
        found: Vec::new(),
    };
    let report = spool.scan(&mut sink).unwrap();
    spool.end_load();

    assert_eq!(
        sink.found,
        vec![queued],
        "only the message of the run before"
    );
    assert_eq!(
        (report.loaded, report.removed, report.quarantined),
        (1, 1, 0)
    );
    assert!(!spool.message_path(&cut).exists());
    // The write in progress is whole: it commits and reads back.
    let env = Envelope::new(None, vec!["w@example.net".parse().unwrap()]);
    let meta = spool.store(writing, &env, false).unwrap();
    assert_eq!(spool.read_meta(&meta.id).unwrap().size, body.len() as u64);
    assert_eq!(
        spool.read_meta(&committed_id).unwrap().size,
        body.len() as u64
    );
    // Each counted once: the load's one and the two new ones.
    assert_eq!(spool.usage(), (3, 3 * body.len() as u64));
}

#[test]
fn a_new_message_never_takes_the_id_of_files_the_load_has_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    spool.begin_load();
    // A leftover `.meta` the load has yet to remove: a new message under
    // its id would have its trailer superseded by it.
    let taken = MessageId::generate();
    fs::write(spool.meta_path(&taken), b"{}").unwrap();
    assert!(!spool.claim_new_id(&taken));
    let free = MessageId::generate();
    assert!(spool.claim_new_id(&free));
    assert!(spool.census.known(&free));
    assert!(!spool.census.known(&taken));
}
