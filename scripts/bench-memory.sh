# The patchers' comparison and the memory benchmarks of scripts/bench.sh, which sources this
# file and calls its functions as sections (patchers, memory, cgroup). They use bench.sh's
# helpers (put, get, median, log, start_server, agent_config, token_of) and its variables
# ($agent, $work, $runs, $target, $v16, $v17, $data, $hpatchz).

# GNU time's "wall user sys maxrss_kib" of a command, appended to the file $1; the command's
# output is thrown away.
measured() {
  local out=$1
  shift
  /usr/bin/time -f '%e %U %S %M' -o "$work/time.tmp" "$@" >/dev/null
  tail -n 1 "$work/time.tmp" >>"$out"
}

# The medians of a measured file: "wall cpu rss_kib".
medians() {
  local wall cpu rss
  wall=$(cut -d' ' -f1 "$1" | median)
  cpu=$(awk '{ print $2 + $3 }' "$1" | median)
  rss=$(cut -d' ' -f4 "$1" | median)
  echo "$wall $cpu $rss"
}

# Where outputs are written: a tmpfs when there is one, so that the disk's writeback is not
# what is measured.
scratch_dir() {
  if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    mktemp -d /dev/shm/ota-bench.XXXXXX
  else
    mktemp -d "$work/scratch.XXXXXX"
  fi
}

# The three bzip2 streams of a BSDIFF40 patch $1, written to $2.ctrl, $2.diff and $2.extra.
split_patch() {
  local ctrl diff
  ctrl=$(od -An -tu8 -j 8 -N 8 "$1" | tr -d ' ')
  diff=$(od -An -tu8 -j 16 -N 8 "$1" | tr -d ' ')
  local cut=(dd if="$1" bs=1M iflag=skip_bytes,count_bytes status=none)
  "${cut[@]}" skip=32 count="$ctrl" of="$2.ctrl"
  "${cut[@]}" skip=$((32 + ctrl)) count="$diff" of="$2.diff"
  "${cut[@]}" skip=$((32 + ctrl + diff)) of="$2.extra"
}

# The real-world pair: libjvm.so of the two newest versions of Debian's openjdk-17-jre-headless
# that the archive offers (a point release and a security update, 23 MiB each), and Debian
# bsdiff's patch between them. Prints "OLD NEW PATCH".
jvm_dataset() {
  local dir=$target/bench-data/openjdk-17 versions v
  mkdir -p "$dir"
  if [ ! -s "$dir/libjvm.patch" ]; then
    versions=$(apt-cache madison openjdk-17-jre-headless | awk '{ print $3 }' | sort -uV | tail -n 2)
    [ "$(echo "$versions" | wc -l)" -eq 2 ] || { echo "fewer than two versions of openjdk-17-jre-headless" >&2; return 1; }
    log "real-world pair: libjvm.so of openjdk-17-jre-headless $(echo "$versions" | tr '\n' ' ')"
    rm -rf "$dir/debs" "$dir/x"
    mkdir -p "$dir/debs"
    (cd "$dir/debs" && for v in $versions; do apt-get download -q "openjdk-17-jre-headless=$v" >/dev/null 2>&1; done)
    local n=0
    for v in $versions; do
      rm -rf "$dir/x"
      dpkg-deb -x "$(ls "$dir"/debs/openjdk-17-jre-headless_"${v/:/%3a}"_*.deb)" "$dir/x"
      cp "$(find "$dir/x" -name libjvm.so -path '*server*' | head -n 1)" "$dir/libjvm-$n.so"
      echo "$v" >"$dir/version-$n"
      n=$((n + 1))
    done
    rm -rf "$dir/x" "$dir/debs"
    bsdiff "$dir/libjvm-0.so" "$dir/libjvm-1.so" "$dir/libjvm.patch.tmp"
    mv "$dir/libjvm.patch.tmp" "$dir/libjvm.patch"
  fi
  echo "$dir/libjvm-0.so $dir/libjvm-1.so $dir/libjvm.patch libjvm.so of openjdk-17-jre-headless $(cat "$dir/version-0") → $(cat "$dir/version-1"),"
}

# The 256 MiB firmware-like catalog, served (over TLS when $1 is "tls") from its own data
# directory; sets big_url and big_dir. Made once (minutes), then reused.
big_server() {
  big_dir=$target/bench-data/268435456
  local tls=()
  [ "${1:-}" != tls ] || tls=(--tls-cert "$work/tls/server.pem" --tls-key "$work/tls/server.key")
  log "the 256 MiB catalog in $big_dir (made once, then reused)"
  start_server "big-${1:-plain}-$BASHPID" demo --dir "$big_dir/server" --size 268435456 --listen 127.0.0.1:0 "${tls[@]}"
  big_url=$url
}

# The 16 -> 17 patch of a demo catalog at $1, as its server makes it, saved at $2.
fetch_first_patch() {
  local token first
  [ ! -s "$2" ] || return 0
  token=$(token_of "$1")
  first=$(curl -sS "$1/file/download?access_token=$token&package_name=com.ubtechinc.alpha2services&version=16&file_name=service5mic&language=CN&robot_version=1&robot_id=15ae48ecs171faef35fafa5feafew" |
    sed -n 's/.*"data":"\([^";]*\)[";].*/\1/p')
  [ -n "$first" ]
  curl -sS -o "$2.tmp" "$first"
  mv "$2.tmp" "$2"
}

# e. The patchers: ota-agent bspatch against hpatchz -s (the old file streamed through an
# 8 MiB cache), hpatchz -m (the old file in memory), Debian's bspatch and the floor (bzip2 -dc
# of the patch's three streams, one after the other), on three data sets, interleaved, every
# output checked.
bench_patchers() {
  local sets=() name old new patch label out tool
  sets+=("fw64 $v16 $v17 $data/debian-16-17.patch firmware-like, Debian bsdiff's patch,")
  big_server plain
  fetch_first_patch "$big_url" "$big_dir/server-16-17.patch"
  sets+=("fw256 $big_dir/server/versions/16 $big_dir/server/versions/17 $big_dir/server-16-17.patch firmware-like, the mock server's patch,")
  sets+=("jvm $(jvm_dataset)")
  out=$(scratch_dir)
  for set in "${sets[@]}"; do
    read -r name old new patch label <<<"$set"
    put "pt_${name}_desc" "$label $(stat -c %s "$old") → $(stat -c %s "$new") bytes, patch $(stat -c %s "$patch")"
    split_patch "$patch" "$work/streams"
    log "e. patchers on $name ($(get "pt_${name}_desc")): $runs runs each (after one warm-up each)"
    for tool in agent hpz_s hpz_m bspatch floor; do : >"$work/pt-$name-$tool"; done
    for i in $(seq 0 "$runs"); do
      for tool in agent hpz_s hpz_m bspatch floor; do
        [ -n "$hpatchz" ] || [[ $tool != hpz_* ]] || continue
        rm -f "$out/new"
        local cmd
        case $tool in
          agent) cmd=("$agent" bspatch "$old" "$out/new" "$patch") ;;
          hpz_s) cmd=("$hpatchz" -s-8m -f "$old" "$patch" "$out/new") ;;
          hpz_m) cmd=("$hpatchz" -m -f "$old" "$patch" "$out/new") ;;
          bspatch) cmd=(bspatch "$old" "$out/new" "$patch") ;;
          floor) cmd=(sh -c 'bzip2 -dc "$1.ctrl"; bzip2 -dc "$1.diff"; bzip2 -dc "$1.extra"' floor "$work/streams") ;;
        esac
        if [ "$i" -eq 0 ]; then
          "${cmd[@]}" >/dev/null
        else
          measured "$work/pt-$name-$tool" "${cmd[@]}"
        fi
        [ "$tool" = floor ] || cmp "$out/new" "$new"
      done
    done
    for tool in agent hpz_s hpz_m bspatch floor; do
      [ ! -s "$work/pt-$name-$tool" ] || put "pt_${name}_$tool" "$(medians "$work/pt-$name-$tool")"
    done
    echo "   $name: agent $(get "pt_${name}_agent"); hpatchz -s $(get "pt_${name}_hpz_s"); hpatchz -m $(get "pt_${name}_hpz_m"); bspatch $(get "pt_${name}_bspatch"); floor $(get "pt_${name}_floor") (wall s, CPU s, RSS KiB)" >&2
  done
  rm -rf "$out"
}

# A CA and a certificate for 127.0.0.1 under $work/tls, for the servers the memory sections
# start: the agent's peak is measured with TLS in it.
make_tls() {
  [ ! -s "$work/tls/server.pem" ] || return 0
  mkdir -p "$work/tls"
  (
    cd "$work/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
      -subj /CN=bench-ca -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=127.0.0.1 \
      -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >ext.cnf
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
      -extfile ext.cnf -out server.pem 2>/dev/null
  )
}

# One `ota-agent check` of the 16 -> 18 update from the server at $1 (catalog in $2), fresh
# state, its "wall user sys maxrss" appended to $3 (nothing when $3 is empty), run by $4... as
# a prefix command (a cgroup's entry, say). The result must be version 18.
update_once() {
  local url=$1 dir=$2 out=$3
  shift 3
  rm -rf "$work/mem-state" "$work/mem-robot"
  mkdir -p "$work/mem-robot"
  cp "$dir/server/versions/16" "$work/mem-robot/file"
  agent_config "$work/mem.toml" "$url" "$work/mem-state" "$work/mem-robot/file" 16 1h \
    "ca_file = \"$work/tls/ca.pem\""
  sync
  if [ -n "$out" ]; then
    measured "$out" "$@" "$agent" --config "$work/mem.toml" check 2>"$work/mem-agent.log"
  else
    "$@" "$agent" --config "$work/mem.toml" check 2>"$work/mem-agent.log"
  fi
  cmp "$work/mem-robot/file" "$dir/server/versions/18" || { cat "$work/mem-agent.log" >&2; return 1; }
}

# f. The whole `ota-agent check` of the two-patch update (download, hash, apply, install, TLS
# and the runtime): its peak RSS (VmHWM, as GNU time reports it) at 1 MiB and at 256 MiB.
bench_memory() {
  make_tls
  local small=$target/bench-data/1048576
  local tls=(--tls-cert "$work/tls/server.pem" --tls-key "$work/tls/server.key")
  start_server small-tls demo --dir "$small/server" --size 1048576 --listen 127.0.0.1:0 "${tls[@]}"
  local small_url=$url
  start_server mid-tls demo --dir "$data/server" --size "$size" --listen 127.0.0.1:0 "${tls[@]}"
  local mid_url=$url
  big_server tls
  log "f. the whole check at 1 MiB, $((size / 1048576)) MiB and 256 MiB, over TLS: $runs runs each (after one warm-up each)"
  : >"$work/mem-small"
  : >"$work/mem-mid"
  : >"$work/mem-big"
  for i in $(seq 0 "$runs"); do
    local o1= o2= o3=
    [ "$i" -eq 0 ] || { o1=$work/mem-small; o2=$work/mem-mid; o3=$work/mem-big; }
    update_once "$small_url" "$small" "$o1" env
    update_once "$mid_url" "$data" "$o2" env
    update_once "$big_url" "$big_dir" "$o3" env
  done
  put mem_small "$(medians "$work/mem-small")"
  put mem_mid "$(medians "$work/mem-mid")"
  put mem_big "$(medians "$work/mem-big")"
  echo "   1 MiB: $(get mem_small); $((size / 1048576)) MiB: $(get mem_mid); 256 MiB: $(get mem_big) (wall s, CPU s, RSS KiB)" >&2
}

# The unit's MemoryMax= and MemoryHigh=, in bytes.
unit_memory() {
  size_bytes "$(sed -n "s/^$1=//p" "$root/systemd/ota-agent.service" | tail -n 1)"
}

# g. The update of the 256 MiB file inside a memory cgroup capped at the unit's MemoryMax=
# (cgroup v1: memory.limit_in_bytes; v2: memory.max, and memory.high at MemoryHigh=), against
# the same update without a cap, interleaved. v1 charges the page cache the agent dirties to
# the cgroup too: the staged file's writes must not push it into the OOM killer.
bench_cgroup() {
  local max high cg kind
  max=$(unit_memory MemoryMax)
  high=$(unit_memory MemoryHigh)
  [ -n "$max" ] && [ "$max" -gt 0 ]
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    kind=v2
    cg=/sys/fs/cgroup/ota-bench-$$
    mkdir "$cg"
    echo "$max" >"$cg/memory.max"
    echo "$high" >"$cg/memory.high"
  elif [ -d /sys/fs/cgroup/memory ]; then
    kind=v1
    cg=/sys/fs/cgroup/memory/ota-bench-$$
    mkdir "$cg"
    echo "$max" >"$cg/memory.limit_in_bytes"
  else
    echo "no memory cgroup to measure in" >&2
    return 1
  fi
  trap 'rmdir "$cg" 2>/dev/null || true' RETURN
  put cg_kind "$kind"
  put cg_limits "MemoryMax=$((max / 1048576)) MiB, MemoryHigh=$((high / 1048576)) MiB"
  make_tls
  big_server tls
  log "g. the 256 MiB update in a $kind memory cgroup ($(get cg_limits)) and without: $runs runs each (after one warm-up each)"
  : >"$work/cg-free"
  : >"$work/cg-capped"
  local enter=(sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$cg")
  for i in $(seq 0 "$runs"); do
    local o1= o2=
    [ "$i" -eq 0 ] || { o1=$work/cg-free; o2=$work/cg-capped; }
    update_once "$big_url" "$big_dir" "$o1" env
    update_once "$big_url" "$big_dir" "$o2" "${enter[@]}"
  done
  put cg_free "$(medians "$work/cg-free")"
  put cg_capped "$(medians "$work/cg-capped")"
  if [ "$kind" = v1 ]; then
    put cg_peak_kib "$(($(cat "$cg/memory.max_usage_in_bytes") / 1024))"
    put cg_failcnt "$(cat "$cg/memory.failcnt")"
    put cg_oom "$(awk '/^oom_kill / { print $2 }' "$cg/memory.oom_control")"
  else
    put cg_peak_kib "$(($(cat "$cg/memory.peak" 2>/dev/null || echo 0) / 1024))"
    put cg_failcnt "$(awk '/^max / { print $2 }' "$cg/memory.events")"
    put cg_oom "$(awk '/^oom_kill / { print $2 }' "$cg/memory.events")"
  fi
  echo "   without a cap: $(get cg_free); capped: $(get cg_capped) (wall s, CPU s, RSS KiB); the cgroup's peak $(get cg_peak_kib) KiB, limit hit $(get cg_failcnt) times, OOM kills $(get cg_oom)" >&2
}

# The tables of the sections above, in markdown.
memory_tables() {
  local name desc a s m b f
  field() { awk -v l="$1" -v i="$2" 'BEGIN { if (l == "n/a") print "n/a"; else { split(l, v, " "); print v[i] } }'; }
  three() { awk -v l="$1" 'BEGIN { if (l == "n/a") print "n/a"; else { split(l, v, " "); printf "%.2f s / %.2f s / %.1f MiB\n", v[1], v[2], v[3] / 1024 } }'; }
  ratios() { echo "$(ratio "$(field "$1" 1)" "$(field "$2" 1)")× / $(ratio "$(field "$1" 2)" "$(field "$2" 2)")× / $(ratio "$(field "$1" 3)" "$(field "$2" 3)")×"; }
  echo
  echo "| patch apply (median of $runs; wall / CPU / peak RSS) | ota-agent | hpatchz -s-8m | hpatchz -m | Debian bspatch | floor: bzip2 -dc of the three streams | ota-agent ÷ hpatchz -s | ÷ hpatchz -m | ÷ bspatch | CPU ÷ floor | RSS ≤ 16 MiB | CPU ≤ 1.0× hpatchz -s | wall ≤ 0.8× hpatchz -s |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  for name in fw64 fw256 jvm; do
    desc=$(get "pt_${name}_desc")
    a=$(get "pt_${name}_agent") s=$(get "pt_${name}_hpz_s") m=$(get "pt_${name}_hpz_m")
    b=$(get "pt_${name}_bspatch") f=$(get "pt_${name}_floor")
    echo "| $name ($desc) | $(three "$a") | $(three "$s") | $(three "$m") | $(three "$b") | $(three "$f") | $(ratios "$a" "$s") | $(ratios "$a" "$m") | $(ratios "$a" "$b") | $(ratio "$(field "$a" 2)" "$(field "$f" 2)")× | $(verdict "$(field "$a" 3)" '<=' 16384) | $(verdict "$(ratio "$(field "$a" 2)" "$(field "$s" 2)")" '<=' 1.0) | $(verdict "$(ratio "$(field "$a" 1)" "$(field "$s" 1)")" '<=' 0.8) |"
  done
  echo
  echo "| memory (median of $runs) | measured | reference | difference or ratio | goal | |"
  echo "|---|---|---|---|---|---|"
  local small big d
  small=$(field "$(get mem_small)" 3) big=$(field "$(get mem_big)" 3)
  d=$(awk -v a="$big" -v b="$small" 'BEGIN { if (a == "n/a" || b == "n/a") print "n/a"; else print a - b }')
  echo "| whole \`check\` 16→18 over TLS, peak RSS (VmHWM) at 256 MiB | $(mib "$big") | $(mib "$small") (at 1 MiB) | $(mib "$d") | ≤ 2 MiB more | $(verdict "$d" '<=' 2048) |"
  local mid
  mid=$(field "$(get mem_mid)" 3)
  d=$(awk -v a="$big" -v b="$mid" 'BEGIN { if (a == "n/a" || b == "n/a") print "n/a"; else print a - b }')
  echo "| … at 256 MiB against at $((size / 1048576)) MiB | $(mib "$big") | $(mib "$mid") (at $((size / 1048576)) MiB) | $(mib "$d") | ≤ 2 MiB more | $(verdict "$d" '<=' 2048) |"
  local free capped r
  free=$(field "$(get cg_free)" 1) capped=$(field "$(get cg_capped)" 1)
  r=$(ratio "$capped" "$free")
  echo "| 256 MiB update in a $(get cg_kind) memory cgroup ($(get cg_limits)), wall | $(sec "$capped") | $(sec "$free") (no cap) | ${r}× | ≤ 1.2× | $(verdict "$r" '<=' 1.2) |"
  echo "| … the cgroup's peak charge (page cache included) / times the limit was hit / OOM kills | $(mib "$(get cg_peak_kib)") / $(get cg_failcnt) / $(get cg_oom) | | | no OOM kill | $(verdict "$(get cg_oom)" '<=' 0) |"
}
