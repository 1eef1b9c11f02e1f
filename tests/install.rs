//! A fresh install, as README.md's "Install and run as a service" says,
//! in order, on this machine: the README's commands run as written (the
//! release build aside: the binary under test is installed), then the
//! shipped unit's ExecStartPre, ExecStart and ExecReload lines run as its
//! `User=`, the sandboxed ones with the file system read-only but for its
//! `ReadWritePaths=` (what `ProtectSystem=strict` does), since systemd
//! itself need not be running here.
//!
//! Nothing leaks onto the machine: everything runs in new mount and
//! network namespaces (`unshare -m -n`) where `/etc`, `/var` and
//! `/usr/local` are overlays on throw-away directories, so the user, the
//! config, the spool and port 2525 exist only there. Needs root.

mod common;

use std::path::Path;
use std::process::Command;

use common::daemon::binary;

/// The shell lines of the README's install block.
fn readme_install_lines() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme
        .split("### Install and run as a service")
        .nth(1)
        .expect("README has no install section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the install section has no sh block");
    block.lines().map(str::to_string).collect()
}

/// The values of `key=` in the unit, in order.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

/// The shell script that emulates `systemctl enable --now` and then
/// `systemctl reload` and `systemctl stop` of the shipped unit.
fn unit_functions(unit: &str) -> String {
    let user = unit_values(unit, "User").pop().expect("no User=");
    let rw: Vec<String> = unit_values(unit, "ReadWritePaths")
        .iter()
        .flat_map(|v| {
            v.split_whitespace()
                .map(|p| p.trim_start_matches('-').to_string())
        })
        .collect();
    let umask = unit_values(unit, "UMask").pop().unwrap_or("0022".into());
    let mut s = format!(
        r#"
# ProtectSystem=strict with ReadWritePaths=, UMask= and User= of the unit.
sandboxed() {{
    exec unshare -m sh -ec '
        for p in {rw}; do if [ -e "$p" ]; then mount --bind "$p" "$p"; fi; done
        findmnt -rno TARGET | while read -r m; do
            case "$m" in /proc*|/sys*|/dev*) continue;; esac
            mount -o remount,bind,ro "$m" 2>/dev/null || true
        done
        for p in {rw}; do if [ -e "$p" ]; then mount -o remount,bind,rw "$p"; fi; done
        umask {umask}
        exec setpriv --reuid={user} --regid={user} --init-groups -- "$@"' sh "$@"
}}
# Both exec: ExecStart's process becomes the daemon, its pid MAINPID.
# A command line of the unit: "+" runs it as root outside the sandbox.
unit_exec() {{
    case "$1" in
        +*) first="${{1#+}}"; shift; exec "$first" "$@";;
        *) sandboxed "$@";;
    esac
}}
start_unit() {{
"#,
        rw = rw.join(" ")
    );
    for pre in unit_values(unit, "ExecStartPre") {
        s.push_str(&format!(
            "    echo 'unit: ExecStartPre={pre}'\n    (unit_exec {pre})\n"
        ));
    }
    let start = unit_values(unit, "ExecStart").pop().expect("no ExecStart=");
    s.push_str(&format!(
        "    echo 'unit: ExecStart={start}'\n    (unit_exec {start}) 2>\"$WORK/serve.log\" &\n    MAINPID=$!\n}}\n"
    ));
    let reload = unit_values(unit, "ExecReload")
        .pop()
        .expect("no ExecReload=");
    s.push_str(&format!(
        "reload_unit() {{\n    echo 'unit: ExecReload={reload}'\n    {}\n}}\n",
        reload.replace("$MAINPID", "\"$MAINPID\"")
    ));
    s
}

#[test]
fn the_readme_install_steps_and_the_shipped_unit_start_a_fresh_install() {
    assert!(
        std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0),
        "this test must run as root (CI runs as root)"
    );
    let before = [
        "/etc/mailqueue.toml",
        "/var/spool/mailqueue",
        "/usr/local/bin/mailqueue",
    ]
    .map(|p| (p, Path::new(p).exists()));
    let repo = env!("CARGO_MANIFEST_DIR");
    let unit = std::fs::read_to_string(Path::new(repo).join("conf/mailqueue.service")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let w = work.path().display().to_string();

    let mut script = format!(
        "set -eu\nWORK={w}\ncd {repo}\nPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    );
    // A machine of our own: overlays over what the install writes.
    for dir in ["/etc", "/var", "/usr/local"] {
        let name = dir.trim_start_matches('/').replace('/', "-");
        script.push_str(&format!(
            "mkdir -p $WORK/{name}/upper $WORK/{name}/work\n\
             mount -t overlay overlay -o lowerdir={dir},upperdir=$WORK/{name}/upper,workdir=$WORK/{name}/work {dir}\n"
        ));
    }
    script.push_str("ip link set lo up\n");
    script.push_str("! id mailqueue 2>/dev/null\n! test -e /var/spool/mailqueue\n");
    script.push_str(&unit_functions(&unit));
    script.push_str("echo '--- README install steps'\n");
    let mut started = false;
    for line in readme_install_lines() {
        let line = if line.trim() == "cargo build --release" {
            "# cargo build --release: the binary under test is installed".to_string()
        } else if line.starts_with("systemctl daemon-reload") {
            started = true;
            "start_unit".to_string()
        } else {
            line.replace("target/release/mailqueue", binary())
        };
        script.push_str(&format!("echo '+ {}'\n{line}\n", line.replace('\'', "")));
    }
    assert!(
        started,
        "the README's install block does not start the unit"
    );
    // Running as the unit's user, with its spool, answering on its port;
    // then a reload and a stop as systemctl would do them.
    script.push_str(
        r#"
echo '--- running'
for i in $(seq 100); do
    grep -q 'listening for SMTP on 127.0.0.1:2525' $WORK/serve.log && break
    kill -0 $MAINPID || { cat $WORK/serve.log; exit 1; }
    sleep 0.1
done
grep -q 'listening for SMTP on 127.0.0.1:2525' $WORK/serve.log
echo "daemon user: $(stat -c %U /proc/$MAINPID)"
echo "spool: $(stat -c '%a %U:%G' /var/spool/mailqueue)"
test "$(stat -c %U /var/spool/mailqueue/lock)" = mailqueue
runuser -u mailqueue -- /usr/local/bin/mailqueue --config /etc/mailqueue.toml check
reload_unit
for i in $(seq 100); do grep -q 'reload: done' $WORK/serve.log && break; sleep 0.1; done
grep 'reload: done' $WORK/serve.log
kill -0 $MAINPID
kill -TERM $MAINPID
status=0; wait $MAINPID || status=$?
echo "serve exited $status"
cat $WORK/serve.log
test $status = 0
echo '--- install ok'
"#,
    );
    let path = work.path().join("install.sh");
    std::fs::write(&path, &script).unwrap();
    let out = Command::new("unshare")
        .args(["-m", "-n", "sh"])
        .arg(&path)
        .env_remove("MAILQUEUE_CONFIG")
        .output()
        .expect("cannot run unshare");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains("--- install ok"),
        "{}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- script\n{script}",
        out.status
    );
    println!("{stdout}");
    assert!(stdout.contains("daemon user: mailqueue"), "{stdout}");
    assert!(
        stdout.contains("spool: 710 mailqueue:mailqueue"),
        "{stdout}"
    );
    assert!(
        stdout.contains("listen 127.0.0.1:2525: in use by the running daemon"),
        "{stdout}"
    );
    // Nothing of it outside the namespaces.
    for (path, existed) in before {
        assert_eq!(Path::new(path).exists(), existed, "{path}");
    }
}
