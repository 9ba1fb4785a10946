# Sourced by scripts/gpu_*_check.sh (GPU machine only): joins a wheel carried in two parts (part one
# left in /tmp by an earlier call, part two under .whl/p2/), checks its sha256, and installs it with
# the other wheels of .whl/p2/ into /tmp/site without dependencies (nothing of the machine's Python
# is replaced). Usage: carry_wheels WHEEL_PATH SHA256 PART_AA PART_AB
carry_wheels() {
  local whl=$1 sha=$2 aa=$3 ab=$4
  cat "$aa" "$ab" > "$whl" || return 1
  echo "$sha  $whl" | sha256sum -c - || return 1
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$whl" .whl/p2/*.whl || return 1
}
