# Sourced by the tools/guest and tools/sandbox scripts: `need CMD PACKAGE` installs the
# Debian package that provides CMD when it is missing, so a fresh Debian 12 machine works.
# Only as root and only with apt-get; otherwise it just says what is missing.
need() {
	command -v "$1" >/dev/null 2>&1 && return 0
	[ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ] && return 0
	if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
		echo "$(basename "$0"): error: '$1' is missing (install the Debian package $2)" >&2
		exit 1
	fi
	echo "$(basename "$0"): installing $2 (for $1)" >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >&2 ||
		{ apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >&2; } ||
		{ echo "$(basename "$0"): error: cannot install $2" >&2; exit 1; }
}
