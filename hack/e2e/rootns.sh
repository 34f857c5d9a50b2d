#!/usr/bin/env bash
# rootns.sh snapshot DIR [WHEN] | compare BEFORE LABEL [REPORT]: the host's root network namespace
# (the one `make e2e` runs in), which `make e2e` must leave exactly as it found it: the cluster's addresses, routes,
# bridges and veths exist only in the network namespaces the run creates (docs/e2e.md, "Network").
#
#   snapshot DIR [WHEN]      writes the namespace's state into DIR, one file per aspect, and WHEN
#                            it was taken ("before up")
#   compare BEFORE LABEL [REPORT]
#                            takes the state now and compares it with the snapshot BEFORE: one
#                            line per aspect (also appended to REPORT), then the differences in
#                            full; exits 1 when anything differs
#
# The aspects: `ip -j addr`, `ip -j route`, `ip -j link` (as named), every routing table of both
# families (`ip -j route show table all`, `ip -j -6 route show table all`), the policy rules, the
# firewall (nft or iptables, when installed), and every `net.*` sysctl. Only what the kernel
# counts down or fills in lazily by itself is left out: address and route lifetimes (DHCP, SLAAC),
# net.netfilter.nf_conntrack_count, net.ipv4.tcp_fastopen_key, net.core.netdev_rss_key. A sysctl
# key that appears (a kernel module loaded, e.g. by a bridge made in a namespace) is reported, not
# counted as a difference: the modules are the kernel's, not the namespace's; a changed value is.
set -euo pipefail
# shellcheck source=hack/e2e/lib.sh
source "$(dirname "$0")/lib.sh"

VOLATILE_SYSCTLS='^net\.(netfilter\.nf_conntrack_count|ipv4\.tcp_fastopen_key|core\.netdev_rss_key) '

# in_root_netns: fails when this runs inside one of the run's network namespaces (PID 1's may not
# be readable, in a sandbox: the root namespace here is the one `make e2e` was started in).
in_root_netns() {
	local self ns
	self="$(stat -L -c %i /proc/self/ns/net)"
	for ns in "${E2E_NETNS[@]}"; do
		if [[ -e "$(netns_path "$ns")" && "$(stat -L -c %i "$(netns_path "$ns")")" == "$self" ]]; then
			e2e_die "rootns.sh runs in the run's network namespace $ns, not in the host's"
		fi
	done
}

# ipj ARGS...: `ip -j ARGS` as sorted, indented JSON (one value a line: diff shows what changed),
# [] when the family is off.
ipj() {
	local out
	out="$(ip -j "$@" 2>/dev/null)" || out='[]'
	[[ -n $out ]] || out='[]'
	jq -S 'map(del(.expires) | if .addr_info then .addr_info |= map(del(.valid_life_time, .preferred_life_time)) else . end)' <<<"$out"
}

firewall() {
	local found=false
	if command -v nft >/dev/null 2>&1; then
		echo "# nft list ruleset"
		{ nft list ruleset 2>&1 || true; } | sed -E 's/(counter packets) [0-9]+ bytes [0-9]+/\1 N bytes N/'
		found=true
	fi
	local t
	for t in iptables-save ip6tables-save; do
		if command -v "$t" >/dev/null 2>&1; then
			echo "# $t"
			{ "$t" 2>&1 || true; } | { grep -v '^#' || true; } | sed -E 's/\[[0-9]+:[0-9]+\]/[N:N]/'
			found=true
		fi
	done
	$found || echo "# neither nft nor iptables is installed"
}

snapshot() {
	local dir=$1 when=${2:-}
	command -v jq >/dev/null 2>&1 || e2e_die "jq is missing (hack/e2e/install.sh installs it)"
	in_root_netns
	mkdir -p "$dir"
	echo "${when:+$when, }$(date +%H:%M:%S)" >"$dir/when"
	ipj addr >"$dir/addr.json"
	ipj route >"$dir/route.json"
	ipj link >"$dir/link.json"
	{
		ipj route show table all
		ipj -6 route show table all
	} >"$dir/routes-all.json"
	{
		ipj rule
		ipj -6 rule
	} >"$dir/rules.json"
	firewall >"$dir/firewall.txt"
	sysctl -a -r '^net\.' 2>/dev/null | grep -Ev "$VOLATILE_SYSCTLS" | LC_ALL=C sort >"$dir/sysctl.txt"
}

# What the root namespace holds, in a line each (from a snapshot).
describe_addr() {
	jq -r '[.[] | ([.ifname] + [.addr_info[] | "\(.local)/\(.prefixlen)"] | join(" "))] | join("; ")' "$1/addr.json"
}
describe_route() {
	jq -r '[.[] | .dst + (if .gateway then " via " + .gateway else "" end) + " dev " + .dev] | join("; ")' "$1/route.json"
}
describe_link() { jq -r '[.[] | .ifname] | join(" ")' "$1/link.json"; }
firewall_what() {
	if grep -q '^# neither' "$1"; then
		echo "neither nft nor iptables is installed"
	else
		echo "$(grep -c -v '^#' "$1" || true) lines of $(grep '^# ' "$1" | cut -c3- | paste -sd, -)"
	fi
}
count_json() { jq -s 'map(length) | map(tostring) | join(" + ")' -r "$1"; }

compare() {
	local before=$1 label=$2 report=${3:-/dev/null} now diffs="" differ=false
	[[ -d $before ]] || e2e_die "no snapshot $before"
	now="$(mktemp -d)"
	snapshot "$now"
	local lines=()
	# line NAME FILE WHAT: one aspect compared.
	line() {
		local name=$1 file=$2 what=$3 verdict=identical
		if ! cmp -s "$before/$file" "$now/$file"; then
			verdict=DIFFERS
			differ=true
			diffs+="--- $name: $(cat "$before/when" 2>/dev/null) / $label"$'\n'
			diffs+="$( (diff -u "$before/$file" "$now/$file" || true) | tail -n +3 | head -n 60)"$'\n'
		fi
		lines+=("$(printf '  %-38s %-9s %s' "$name" "$verdict" "$what")")
	}
	line "ip -j addr" addr.json "$(describe_addr "$before")"
	line "ip -j route" route.json "$(describe_route "$before")"
	line "ip -j link" link.json "$(describe_link "$before")"
	line "ip -j [-6] route show table all" routes-all.json "$(count_json "$before/routes-all.json") routes"
	line "ip -j [-6] rule" rules.json "$(count_json "$before/rules.json") rules"
	line "firewall (nft, iptables)" firewall.txt "$(firewall_what "$before/firewall.txt")"
	# sysctl: a value changed differs; a key that appeared or went is noted.
	local changed added gone
	changed="$(awk -F' = ' 'NR == FNR { b[$1] = $2; next } ($1 in b) && b[$1] != $2 { print "  " $1 ": " b[$1] " -> " $2 }' \
		"$before/sysctl.txt" "$now/sysctl.txt")"
	added="$(LC_ALL=C comm -13 <(cut -d' ' -f1 "$before/sysctl.txt") <(cut -d' ' -f1 "$now/sysctl.txt") | wc -l)"
	gone="$(LC_ALL=C comm -23 <(cut -d' ' -f1 "$before/sysctl.txt") <(cut -d' ' -f1 "$now/sysctl.txt") | wc -l)"
	local verdict=identical what
	what="$(wc -l <"$before/sysctl.txt") keys"
	if ((added > 0 || gone > 0)); then what+="; $added keys appeared, $gone went"; fi
	if [[ -n $changed ]]; then
		verdict=DIFFERS
		differ=true
		diffs+="--- sysctl net.*: $(cat "$before/when" 2>/dev/null) -> $label"$'\n'"$changed"$'\n'
	fi
	lines+=("$(printf '  %-38s %-9s %s' "sysctl net.*" "$verdict" "$what")")

	local head taken
	taken="$(cat "$before/when" 2>/dev/null || echo "the snapshot $before")"
	if $differ; then
		head="host network namespace $label: DIFFERS from $taken"
	else
		head="host network namespace $label: identical to $taken"
	fi
	{
		echo "$head"
		printf '%s\n' "${lines[@]}"
	} | tee -a "$report"
	if $differ; then printf '%s' "$diffs"; fi
	rm -rf "$now"
	! $differ
}

case "${1:-}" in
snapshot)
	[[ $# -ge 2 ]] || e2e_die "usage: $0 snapshot DIR [WHEN]"
	snapshot "$2" "${3:-}"
	;;
compare)
	[[ $# -ge 3 ]] || e2e_die "usage: $0 compare BEFORE LABEL [REPORT]"
	compare "$2" "$3" "${4:-/dev/null}"
	;;
*)
	echo "usage: $0 snapshot DIR [WHEN] | compare BEFORE LABEL [REPORT]" >&2
	exit 2
	;;
esac
