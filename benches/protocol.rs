//! Protocol text: building a bounce (RFC 3464 DSN), parsing the SMTP
//! commands the listener receives and the replies the client receives.
//!
//! `cargo bench --bench protocol`

mod common;

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mailqueue::queue::dsn::{self, Action, Notice, Reported, Returned};
use mailqueue::queue::meta::RcptStatus;
use mailqueue::smtp::command;
use mailqueue::{MessageId, SmtpReply};

/// A typical header block of a bounced message (about 1 KB).
const HEADER: &[u8] = b"Received: from client.example.org (client.example.org [192.0.2.10])\r\n\
\tby mq.example.org (mailqueue) with ESMTP id 19AC8F3E2B1C40A3F9D1\r\n\
\tfor <subscriber.0@mail.example.net>; Fri, 28 Nov 2025 14:03:52 +0000\r\n\
DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=lists.example.org; s=s1;\r\n\
\th=from:to:subject:date:message-id; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n\
\tb=dzdVyOfAKCdLXdJOc9G2q8LoXSlEniSbav+yuU4zGeeruD00lszZVoG4ZHRNiYzR\r\n\
From: Example Lists <newsletter@lists.example.org>\r\n\
To: subscriber.0@mail.example.net\r\n\
Subject: Weekly digest, issue 42\r\n\
Date: Fri, 28 Nov 2025 14:03:50 +0000\r\n\
Message-ID: <20251128140350.12345@lists.example.org>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/alternative; boundary=\"b1_5f3c\"\r\n\
List-Unsubscribe: <mailto:unsubscribe@lists.example.org?subject=unsubscribe>\r\n\
List-Id: Weekly digest <weekly.lists.example.org>\r\n";

fn bounce(c: &mut Criterion) {
    let mut meta = common::deferred_meta(MessageId::generate(), 3);
    for r in &mut meta.recipients {
        r.status = RcptStatus::Failed;
        r.last_error = Some(SmtpReply::with_code(
            550,
            (5, 1, 1),
            &format!("<{}>: Recipient address rejected: User unknown", r.address),
        ));
    }
    let notice = Notice {
        reporting_mta: "mq.example.org",
        from: "MAILER-DAEMON@mq.example.org",
        original: &meta,
        returned: Returned::Header(HEADER),
        recipients: meta
            .recipients
            .iter()
            .map(|rcpt| Reported {
                rcpt,
                action: Action::Failed,
            })
            .collect(),
        will_retry_until: None,
        now: SystemTime::now(),
        unique: "19AC8F3E2B1C40A3F9D2",
    };
    assert!(dsn::build(&notice).is_some());

    let mut group = c.benchmark_group("dsn");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Elements(1));
    group.bench_function("build_3_failed", |b| {
        b.iter(|| dsn::build(black_box(&notice)))
    });
    group.finish();
}

fn commands(c: &mut Criterion) {
    let lines = [
        ("ehlo", "EHLO client.example.org"),
        (
            "mail",
            "MAIL FROM:<newsletter-bounces@lists.example.org> SIZE=4096 BODY=8BITMIME RET=HDRS ENVID=QQ314159",
        ),
        (
            "rcpt",
            "RCPT TO:<subscriber.0@mail.example.net> NOTIFY=FAILURE,DELAY ORCPT=rfc822;subscriber.0@mail.example.net",
        ),
        ("data", "DATA"),
    ];
    let mut group = c.benchmark_group("smtp_command_parse");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Elements(1));
    for (name, line) in lines {
        command::parse(line).unwrap();
        group.bench_function(name, |b| b.iter(|| command::parse(black_box(line))));
    }
    group.finish();
}

fn replies(c: &mut Criterion) {
    let ehlo = [
        "250-mx1.mail.example.net",
        "250-PIPELINING",
        "250-SIZE 52428800",
        "250-ETRN",
        "250-STARTTLS",
        "250-ENHANCEDSTATUSCODES",
        "250-8BITMIME",
        "250-DSN",
        "250 SMTPUTF8",
    ];
    let mut group = c.benchmark_group("smtp_reply_parse");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Elements(1));
    for (name, line) in [
        ("queued", "250 2.0.0 Ok: queued as 4Bq3Xk1Z2pz9"),
        (
            "reject",
            "550 5.1.1 <subscriber.0@mail.example.net>: Recipient address rejected: User unknown in virtual mailbox table",
        ),
    ] {
        assert!(SmtpReply::parse_line(line).is_some());
        group.bench_function(name, |b| b.iter(|| SmtpReply::parse_line(black_box(line))));
    }
    // One element per reply line.
    group.throughput(Throughput::Elements(ehlo.len() as u64));
    group.bench_function("ehlo_9_lines", |b| {
        b.iter(|| {
            ehlo.iter()
                .filter_map(|l| SmtpReply::parse_line(black_box(l)))
                .count()
        })
    });
    group.finish();
}

criterion_group!(benches, bounce, commands, replies);
criterion_main!(benches);
