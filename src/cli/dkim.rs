//! `mailqueue dkim keygen`: a new signing key, the DNS record to publish
//! and the `[[dkim]]` lines to add; `mailqueue dkim check`: whether each
//! configured key's record is published, through the configured resolver.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use mailqueue::config::Config;
use mailqueue::delivery::dns::Resolver;
use mailqueue::dkim::{self, Algorithm, SigningKey};

use super::exit;

/// What `dkim keygen` was asked for.
pub struct Keygen {
    pub domain: String,
    pub selector: String,
    pub ed25519: bool,
    pub bits: u32,
    pub out: Option<PathBuf>,
}

/// Writes a new key (PKCS#8 PEM, mode 0600, never over an existing
/// file) and prints its record and configuration lines.
pub fn keygen(k: &Keygen) -> u8 {
    let algorithm = if k.ed25519 {
        Algorithm::Ed25519Sha256
    } else {
        Algorithm::RsaSha256
    };
    let path = k
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.{}.pem", k.domain, k.selector)));
    let made = dkim::generate_pem(algorithm, k.bits).and_then(|pem| {
        // Checked before anything is written: a bad domain or selector
        // leaves no key file behind.
        let key = SigningKey::from_pem(&k.domain, &k.selector, &pem, &path)?;
        Ok((pem, key))
    });
    let (pem, key) = match made {
        Ok(m) => m,
        Err(e) => {
            eprintln!("mailqueue: dkim keygen: {e}");
            return exit::USAGE;
        }
    };
    if let Err(e) = write_private(&path, &pem) {
        eprintln!("mailqueue: dkim keygen: {}: {e}", path.display());
        return exit::CANTCREAT;
    }
    let shown = std::fs::canonicalize(&path).unwrap_or(path);
    let kind = match algorithm {
        Algorithm::RsaSha256 => format!("RSA, {} bits", key.bits()),
        Algorithm::Ed25519Sha256 => "Ed25519".to_string(),
    };
    println!(
        "Wrote the private key ({kind}) to {} (mode 0600; make it the daemon's: \
         chown mailqueue: {}).",
        shown.display(),
        shown.display()
    );
    println!();
    println!("Publish this DNS TXT record:");
    println!("{}", dkim::zone_line(&key));
    println!();
    println!("Add to the configuration, then reload (systemctl reload mailqueue):");
    println!("[[dkim]]");
    println!("domain = {:?}", key.domain());
    println!("selector = {:?}", key.selector());
    println!("key_file = {:?}", shown.display().to_string());
    println!();
    println!("Once the record is published, `mailqueue dkim check` confirms it.");
    exit::OK
}

/// Creates `path` with mode 0600 (refusing an existing file) and writes
/// the key, durably.
fn write_private(path: &Path, pem: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => std::io::Error::new(
                e.kind(),
                "exists already; not overwritten (choose another --out or remove it)",
            ),
            _ => e,
        })?;
    let written = file.write_all(pem).and_then(|()| file.sync_all());
    if written.is_err() {
        let _ = std::fs::remove_file(path);
    }
    written
}

/// Looks up each configured key's record and says what it found; exit 0
/// only when every key's record is published and matches.
pub fn check(config: &Config) -> u8 {
    let signer = match config.dkim_signer() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mailqueue: {e}");
            return exit::CONFIG;
        }
    };
    if signer.is_empty() {
        println!("no [[dkim]] keys configured: nothing is signed");
        return exit::OK;
    }
    let d = &config.delivery;
    let resolver = match Resolver::new(&d.dns_servers, d.dns_timeout) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mailqueue: {e}");
            return exit::CONFIG;
        }
    };
    let mut code = exit::OK;
    for (key, (name, published)) in signer.keys().zip(dkim::check_all(&resolver, &signer)) {
        if published.is_ok() {
            println!("{name}: {published}");
        } else {
            code = exit::FAILED;
            println!("{name}: {published}");
            println!("  publish: {}", dkim::zone_line(key));
        }
    }
    code
}
