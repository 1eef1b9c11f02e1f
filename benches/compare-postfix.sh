#!/usr/bin/env bash
# Relays the same load through Postfix and through mailqueue on this
# machine, alternating, and prints the medians and the ratios
# mailqueue/Postfix.
#
#   bash benches/compare-postfix.sh                 # 4 KiB, 64 KiB and 1 MiB; K=20 ROUNDS=3
#   SIZES=4096 N=500 ROUNDS=1 bash benches/compare-postfix.sh  # a quick check
#
# SIZES lists the message sizes, each measured in its own ROUNDS (default
# "4096 65536 1048576"); an entry SIZE:CONNECTIONS runs that size over
# its own number of connections instead of K (the performance issue's
# table has "1024:100"). N messages per run for sizes up to 64 KiB
# (default 5000), N_LARGE for larger ones (default 500). With two sizes or
# more, the summary gives the CPU slope per KiB between the first two.
#
# Load and sink are Postfix's test tools, the same for both:
#   smtp-source -m N -s K -l S  ->  MTA on 127.0.0.1  ->  smtp-sink -c on 127.0.0.1
# Each round also runs the load straight into the sink ("direct", no MTA):
# half of that rate is what a queue that cost nothing would relay, and
# the summary gives each MTA's share of it.
# For each run:
#   throughput = N / (time from the start of smtp-source until the sink has
#                counted N messages; its -c counter is polled every 20 ms)
#   accept rate = N / (time until smtp-source has finished)
#   CPU/message = CPU time (user + system) of the MTA's processes during the
#                run / N. See tree_ticks below for how Postfix's many
#                processes are counted.
# Postfix runs as a throwaway instance (its own config, queue and data
# directories under a temporary directory; the system's /etc/postfix is not
# touched) with default settings except: relay everything to the sink
# (relayhost), loopback only, no DNS, log to a file (mailqueue logs to a
# file too), default_destination_concurrency_limit = 20. Both fsync every
# message before acknowledging it. mailqueue runs with `[queue] workers`
# = WORKERS (default 20, the same concurrency towards the sink).
#
# LOGS=off runs both without their per-message log lines (Postfix without
# maillog_file, and no syslog here; mailqueue with RUST_LOG=warn); the
# "deferred" column is then unknown.
# Environment: N, S, K, ROUNDS, WORKERS, LOGS, RUN_TIMEOUT (seconds per run,
# default 300), MAILQUEUE_BIN (default: cargo build --release), BENCH_TMPDIR
# (default /var/tmp; keep it on a real disk, not a tmpfs), KEEP=1 keeps the
# run directories (logs) for a look afterwards.
# Needs root (Postfix starts as root). Installs Debian's postfix package if
# it is missing. Leaves Postfix stopped. Network: 127.0.0.1 only.
set -euo pipefail

N_SMALL=${N:-5000}
N_LARGE=${N_LARGE:-500}
SIZES=${SIZES:-${S:-4096 65536 1048576}}
K=${K:-20}
K_DEFAULT=$K
# The most connections any size uses: Postfix's per-client limit is set
# once for the whole run.
K_MAX=$K
for entry in $SIZES; do
  case $entry in *:*) [ "${entry#*:}" -gt "$K_MAX" ] && K_MAX=${entry#*:} ;; esac
done
ROUNDS=${ROUNDS:-3}
WORKERS=${WORKERS:-20}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
LOGS=${LOGS:-file}
case $LOGS in file | off) ;; *) echo "compare-postfix: LOGS is file or off" >&2 && exit 1 ;; esac

cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

die() {
  echo "compare-postfix: $*" >&2
  exit 1
}

[ "$(id -u)" = 0 ] || die "run as root: Postfix's master starts as root"

if ! command -v postfix >/dev/null 2>&1 || ! command -v smtp-source >/dev/null 2>&1 ||
  ! command -v smtp-sink >/dev/null 2>&1; then
  echo "compare-postfix: installing postfix"
  apt-get update -qq
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postfix >/dev/null
fi
id nobody >/dev/null 2>&1 || die "user nobody is missing (smtp-sink drops root privileges to it)"

if [ -z "${MAILQUEUE_BIN:-}" ]; then
  cargo build --release --quiet --bin mailqueue
  MAILQUEUE_BIN="${CARGO_TARGET_DIR:-target}/release/mailqueue"
fi
[ -x "$MAILQUEUE_BIN" ] || die "$MAILQUEUE_BIN is not an executable"
MAILQUEUE_BIN=$(readlink -f "$MAILQUEUE_BIN")

TCK=$(getconf CLK_TCK)
BASE=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/compare-postfix.XXXXXX")
# Postfix's daemons drop to the postfix user and must reach their queue.
chmod 755 "$BASE"
PF="$BASE/postfix"
PF_STARTED=0
SINK_PID=""
MQ_PID=""

postfix_instance() { postfix -c "$PF/etc" "$@"; }

# The queue directory of the current Postfix run.
PF_QUEUE="$PF/spool"

master_pid() { tr -d ' \n' <"$PF_QUEUE/pid/master.pid" 2>/dev/null || true; }

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# Waits up to $2 seconds for process $1 to end.
wait_gone() {
  local pid=$1 end=$((SECONDS + $2))
  while alive "$pid" && [ $SECONDS -lt "$end" ]; do sleep 0.05; done
  ! alive "$pid"
}

postfix_stop() {
  [ "$PF_STARTED" = 1 ] || return 0
  local pid
  pid=$(master_pid)
  postfix_instance stop >/dev/null 2>&1 || true
  if ! wait_gone "$pid" 30; then
    postfix_instance abort >/dev/null 2>&1 || true
    wait_gone "$pid" 10 || kill -KILL "$pid" 2>/dev/null || true
  fi
  PF_STARTED=0
}

stop_pid() { # pid, seconds of grace after SIGTERM
  alive "$1" || return 0
  kill -TERM "$1" 2>/dev/null || true
  wait_gone "$1" "$2" || kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

cleanup() {
  postfix_stop
  stop_pid "$MQ_PID" 40
  stop_pid "$SINK_PID" 5
  if [ "${KEEP:-0}" = 1 ]; then
    echo "compare-postfix: run directories kept in $BASE"
  else
    rm -rf "$BASE"
  fi
}
trap cleanup EXIT
trap 'echo "compare-postfix: command failed at line $LINENO" >&2' ERR
trap 'exit 130' INT TERM

# A port nobody listens on (a connection to it is refused).
free_port() {
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 30000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
  die "no free port found"
}

# Waits up to $2 seconds for an SMTP greeting on port $1.
wait_banner() {
  local end=$((SECONDS + $2)) greeting
  while [ $SECONDS -lt "$end" ]; do
    greeting=$(timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1 && head -c 3 <&3 && printf 'QUIT\r\n' >&3" 2>/dev/null || true)
    [ "$greeting" = 220 ] && return 0
    sleep 0.05
  done
  return 1
}

# The sink's message counter: the last "mesg=N" that smtp-sink -c printed.
sink_count() {
  local tail
  tail=$(tail -c 64 "$1" 2>/dev/null || true)
  case $tail in
    *mesg=*) tail=${tail##*mesg=} && echo "${tail%%[!0-9]*}" ;;
    *) echo 0 ;;
  esac
}

# CPU clock ticks (user + system) used so far by process $1 and all its
# descendants, living or dead. Each live process contributes utime + stime
# (all its threads) and cutime + cstime, the totals of the children it has
# already waited for. Postfix's master waits for every daemon it spawns
# (smtpd, cleanup, qmgr, smtp, trivial-rewrite, ...), so a daemon that
# exits during the run moves from the live sum into master's cutime/cstime
# and is still counted; the difference of two readings is what the whole
# tree used in between. For mailqueue (one process) it is its utime + stime.
tree_ticks() {
  # cat, not awk on the files: processes come and go while they are read.
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v root="$1" '
    {
      # The command name is in parentheses and may hold spaces: fields are
      # counted after its closing parenthesis (state is field 3 of stat).
      i = length($0)
      while (i > 0 && substr($0, i, 1) != ")") i--
      split(substr($0, i + 2), f, " ")
      ppid[$1] = f[2]
      ticks[$1] = f[12] + f[13] + f[14] + f[15]
    }
    END {
      for (p in ticks) {
        q = p
        for (hops = 0; q != root && q != "" && q + 0 > 1 && hops < 64; hops++) q = ppid[q]
        if (q == root) sum += ticks[p]
      }
      printf "%d\n", sum
    }'
}

postfix_queue_files() {
  find "$PF_QUEUE/maildrop" "$PF_QUEUE/incoming" "$PF_QUEUE/active" \
    "$PF_QUEUE/deferred" "$PF_QUEUE/hold" -type f 2>/dev/null | wc -l
}

mailqueue_queue_files() { find "$1/queue" -type f 2>/dev/null | wc -l; }

SINK_PORT=$(free_port)
PF_PORT=$(free_port)
MQ_PORT=$(free_port)
[ "$PF_PORT" != "$SINK_PORT" ] && [ "$MQ_PORT" != "$SINK_PORT" ] && [ "$MQ_PORT" != "$PF_PORT" ] ||
  die "port clash, run again"

setup_postfix() {
  mkdir -p "$PF/etc" "$PF_QUEUE" "$PF/data"
  chown postfix:postfix "$PF/data"
  : >"$PF/etc/main.cf"
  # Only the services a relay needs, none chrooted (the throwaway queue has
  # no chroot files); the SMTP server listens on 127.0.0.1:PF_PORT.
  cat >"$PF/etc/master.cf" <<EOF
127.0.0.1:$PF_PORT inet n - n - - smtpd
pickup     unix  n - n 60 1 pickup
cleanup    unix  n - n -  0 cleanup
qmgr       unix  n - n 300 1 qmgr
rewrite    unix  - - n -  - trivial-rewrite
bounce     unix  - - n -  0 bounce
defer      unix  - - n -  0 bounce
trace      unix  - - n -  0 bounce
verify     unix  - - n -  1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -  - proxymap
proxywrite unix  - - n -  1 proxymap
smtp       unix  - - n -  - smtp
relay      unix  - - n -  - smtp
showq      unix  n - n -  - showq
error      unix  - - n -  - error
retry      unix  - - n -  - error
discard    unix  - - n -  - discard
anvil      unix  - - n -  1 anvil
scache     unix  - - n -  1 scache
postlog    unix-dgram n - n - 1 postlogd
EOF
  local conn_limit=50
  [ "$K_MAX" -gt 40 ] && conn_limit=$((K_MAX + 10))
  postconf -c "$PF/etc" -e \
    "compatibility_level = 3.6" \
    "queue_directory = $PF_QUEUE" \
    "data_directory = $PF/data" \
    "myhostname = postfix.bench.example" \
    "mydestination =" \
    "inet_interfaces = loopback-only" \
    "inet_protocols = ipv4" \
    "mynetworks = 127.0.0.0/8" \
    "smtpd_relay_restrictions = permit_mynetworks, reject" \
    "relayhost = [127.0.0.1]:$SINK_PORT" \
    "default_destination_concurrency_limit = 20" \
    "smtpd_client_connection_count_limit = $conn_limit" \
    "smtpd_peername_lookup = no" \
    "smtp_dns_support_level = disabled" \
    "alias_maps =" "alias_database =" "local_recipient_maps =" \
    "biff = no"
  if [ "$LOGS" = file ]; then
    postconf -c "$PF/etc" -e "maillog_file = $PF/maillog"
  fi
  postfix_instance check >/dev/null 2>&1 || die "postfix check failed: $(postfix_instance check 2>&1 | tail -3)"
}

# One run, in this shell (so that the exit trap knows what to stop); sets
# RESULT to "accept_rate throughput cpu_ms_per_message deferred".
run_one() {
  local system=$1 round=$2 dir="$BASE/run-$round-$1" port root_pid spool=""
  mkdir -p "$dir"
  smtp-sink -c -u nobody "127.0.0.1:$SINK_PORT" 256 >"$dir/sink.out" 2>"$dir/sink.err" &
  SINK_PID=$!
  wait_banner "$SINK_PORT" 10 || die "smtp-sink did not start: $(cat "$dir/sink.err")"

  case $system in
    postfix)
      port=$PF_PORT
      : >"$PF/maillog"
      # A fresh queue for every run, as mailqueue gets a fresh spool: a
      # directory that once held thousands of files stays large when empty
      # and slows down the scans of the next run.
      PF_QUEUE="$dir/postfix-queue"
      mkdir -p "$PF_QUEUE"
      postconf -c "$PF/etc" -e "queue_directory = $PF_QUEUE"
      postfix_instance check >/dev/null 2>&1 || die "postfix check failed: $(postfix_instance check 2>&1 | tail -3)"
      postfix_instance start >"$dir/postfix-start.log" 2>&1 || die "postfix start failed: $(tail -3 "$PF/maillog")"
      PF_STARTED=1
      wait_banner "$port" 30 || die "Postfix did not greet on $port: $(tail -3 "$PF/maillog")"
      root_pid=$(master_pid)
      ;;
    direct)
      # No queue at all: smtp-source straight into smtp-sink, the most
      # this machine moves; a relay carries each message twice (in and out).
      port=$SINK_PORT
      root_pid=""
      ;;
    mailqueue)
      port=$MQ_PORT
      spool="$dir/spool"
      cat >"$dir/mailqueue.toml" <<EOF
hostname = "mq.bench.example"
spool = "$spool"
[queue]
workers = $WORKERS
[listen]
smtp = ["127.0.0.1:$port"]
max_connections = $((K > 48 ? K + 16 : 64))
[delivery]
target = "smtp://127.0.0.1:$SINK_PORT"
tls = "none"
EOF
      if [ "$LOGS" = file ]; then
        "$MAILQUEUE_BIN" --config "$dir/mailqueue.toml" serve >"$dir/daemon.log" 2>&1 &
      else
        RUST_LOG=warn "$MAILQUEUE_BIN" --config "$dir/mailqueue.toml" serve >"$dir/daemon.log" 2>&1 &
      fi
      MQ_PID=$!
      wait_banner "$port" 30 || die "mailqueue did not greet on $port: $(tail -3 "$dir/daemon.log")"
      root_pid=$MQ_PID
      ;;
  esac

  local before=0 after=0 t0 t1 t2 end count left=0
  [ -n "$root_pid" ] && before=$(tree_ticks "$root_pid")
  t0=$EPOCHREALTIME
  end=$((SECONDS + RUN_TIMEOUT))
  timeout "$RUN_TIMEOUT" smtp-source -m "$N" -s "$K" -l "$S" -f from@example.org -t to@example.org \
    "127.0.0.1:$port" >"$dir/source.out" 2>&1 || die "$system: smtp-source failed: $(tail -3 "$dir/source.out")"
  t1=$EPOCHREALTIME
  while count=$(sink_count "$dir/sink.out") && [ "$count" -lt "$N" ]; do
    [ $SECONDS -lt "$end" ] || die "$system: the sink has $count of $N after ${RUN_TIMEOUT}s"
    sleep 0.02
  done
  t2=$EPOCHREALTIME
  # The last deliveries remove their queue files just after the sink's reply.
  while [ "$system" != direct ] &&
    left=$(if [ "$system" = postfix ]; then postfix_queue_files; else mailqueue_queue_files "$spool"; fi) &&
    [ "$left" -gt 0 ] && [ $SECONDS -lt $((end + 30)) ]; do
    sleep 0.02
  done
  [ -n "$root_pid" ] && after=$(tree_ticks "$root_pid")
  [ "$left" -eq 0 ] || die "$system: $left queue files left after the run"

  local log="" deferred
  if [ "$system" = postfix ]; then
    postfix_stop
    log="$PF/maillog"
  elif [ "$system" = mailqueue ]; then
    stop_pid "$MQ_PID" 40
    MQ_PID=""
    log="$dir/daemon.log"
  fi
  stop_pid "$SINK_PID" 5
  SINK_PID=""
  deferred=-
  [ "$LOGS" = file ] && [ -n "$log" ] && deferred=$(grep -c 'status=deferred' "$log" || true)
  [ "${KEEP:-0}" = 1 ] && [ "$system" = postfix ] && cp "$PF/maillog" "$dir/maillog"
  RESULT=$(awk -v n="$N" -v t0="$t0" -v t1="$t1" -v t2="$t2" -v cpu=$((after - before)) -v tck="$TCK" -v d="$deferred" \
    -v measured="$root_pid" \
    'BEGIN { printf "%.1f %.1f %s %s\n", n / (t1 - t0), n / (t2 - t0), measured == "" ? "-" : sprintf("%.3f", cpu / tck / n * 1000), d }')
}

median() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

if postfix status >/dev/null 2>&1; then
  echo "compare-postfix: note: the system's own Postfix is running and shares the CPU" >&2
fi
load=$(cut -d' ' -f1 /proc/loadavg)
echo "compare-postfix: sizes $SIZES bytes (SIZE:CONNECTIONS; else K=$K connections), $ROUNDS rounds each, fsync on in both"
echo "  Postfix $(postconf -d -h mail_version) (throwaway instance, default_destination_concurrency_limit = 20)"
echo "  mailqueue $MAILQUEUE_BIN (workers = $WORKERS); logs: $LOGS; load average at start: $load"
setup_postfix

# One size: ROUNDS rounds of the three systems; prints the rounds and the
# medians, and leaves the median CPU per message of both MTAs in
# SIZE_CPU ("postfix mailqueue").
compare_size() {
  local pft pfc mqt mqc dt worst
  declare -a pf_thr pf_cpu mq_thr mq_cpu direct_thr ratios
  echo
  echo "== N=$N messages of S=$S bytes over K=$K connections"
  printf '%-6s %-10s %12s %14s %12s %9s\n' round system "accept msg/s" "relayed msg/s" "CPU ms/msg" deferred
  for round in $(seq 1 "$ROUNDS"); do
    # Alternate which goes first, so neither always runs on a warmer machine.
    if [ $((round % 2)) = 1 ]; then order="postfix mailqueue direct"; else order="direct mailqueue postfix"; fi
    for system in $order; do
      run_one "$system" "$round"
      read -r accept thr cpu deferred <<<"$RESULT"
      printf '%-6s %-10s %12s %14s %12s %9s\n' "$round" "$system" "$accept" "$thr" "$cpu" "$deferred"
      case $system in
        postfix) pf_thr+=("$thr") pf_cpu+=("$cpu") ;;
        mailqueue) mq_thr+=("$thr") mq_cpu+=("$cpu") ;;
        direct) direct_thr+=("$thr") ;;
      esac
    done
    ratios+=("$(awk -v m="${mq_thr[-1]}" -v p="${pf_thr[-1]}" 'BEGIN { printf "%.2f", m / p }')")
  done
  pft=$(median "${pf_thr[@]}") pfc=$(median "${pf_cpu[@]}")
  mqt=$(median "${mq_thr[@]}") mqc=$(median "${mq_cpu[@]}")
  dt=$(median "${direct_thr[@]}")
  worst=$(printf '%s\n' "${ratios[@]}" | sort -g | head -1)
  echo
  printf '%-17s %14s %12s\n' "median, S=$S" "relayed msg/s" "CPU ms/msg"
  printf '%-17s %14s %12s\n' postfix "$pft" "$pfc"
  printf '%-17s %14s %12s\n' mailqueue "$mqt" "$mqc"
  printf '%-17s %14s %12s\n' direct "$dt" -
  awk -v mt="$mqt" -v pt="$pft" -v mc="$mqc" -v pc="$pfc" -v dt="$dt" -v worst="$worst" 'BEGIN {
    printf "%-17s %14.2f %12.2f   (targets: 4 KiB >= 5 and CPU <= 0.20; 64 KiB >= 4 and CPU <= 0.33; 1 MiB >= 3)\n", "mailqueue/Postfix", mt / pt, mc / pc
    printf "%-17s %14s\n", "lowest round", worst
    # A queue that cost nothing would relay at half the direct rate.
    printf "%-17s %14.1f\n", "no-queue limit", dt / 2
    printf "%-17s %13.0f%% %12s   (target at 4 KiB: >= 75%%)\n", "mailqueue share", 100 * mt / (dt / 2), ""
    printf "%-17s %13.0f%%\n", "Postfix share", 100 * pt / (dt / 2)
  }'
  SIZE_CPU="$pfc $mqc"
}

declare -a sizes cpus
for entry in $SIZES; do
  S=${entry%%:*} K=$K_DEFAULT
  case $entry in *:*) K=${entry#*:} ;; esac
  if [ "$S" -le 65536 ]; then N=$N_SMALL; else N=$N_LARGE; fi
  compare_size
  sizes+=("$S") cpus+=("$SIZE_CPU")
done

if [ "${#sizes[@]}" -ge 2 ]; then
  read -r pf1 mq1 <<<"${cpus[0]}"
  read -r pf2 mq2 <<<"${cpus[1]}"
  echo
  awk -v s1="${sizes[0]}" -v s2="${sizes[1]}" -v p1="$pf1" -v p2="$pf2" -v m1="$mq1" -v m2="$mq2" 'BEGIN {
    kib = (s2 - s1) / 1024
    printf "CPU per extra KiB between %d and %d bytes (target: mailqueue <= Postfix):\n", s1, s2
    printf "  postfix   %8.2f us/KiB\n", (p2 - p1) * 1000 / kib
    printf "  mailqueue %8.2f us/KiB\n", (m2 - m1) * 1000 / kib
  }'
fi
