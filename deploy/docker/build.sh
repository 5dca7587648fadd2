#!/usr/bin/env bash
# deploy/docker/build.sh: build the static spacegate binary, exactly as the
# Dockerfile's build stage does, and check that it is static and runs with
# nothing around it (no shell, no libc, no environment), as in the
# distroless image.
#
#   deploy/docker/build.sh [OUT]       default OUT: dist/spacegate-$GOOS-$GOARCH
#
# Environment: VERSION (default: git describe, else "dev"), GOOS, GOARCH
# (default: the build machine's; set them to cross-compile).
set -euo pipefail

cd "$(dirname "$0")/../.."

export GOTOOLCHAIN=local CGO_ENABLED=0
command -v go >/dev/null 2>&1 || export PATH="/usr/local/go/bin:$PATH"
GOOS=${GOOS:-$(go env GOOS)}
GOARCH=${GOARCH:-$(go env GOARCH)}
export GOOS GOARCH
if [[ -z ${VERSION:-} ]]; then
  VERSION=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
fi
out=${1:-dist/spacegate-$GOOS-$GOARCH}
mkdir -p "$(dirname "$out")"

# -trimpath: no build machine paths in the binary; -s -w: no symbol table
# or DWARF (a third of the size); -buildvcs=false: the image build has no
# .git, and VERSION says which commit it is.
go build -trimpath -buildvcs=false -ldflags "-s -w -X main.version=$VERSION" -o "$out" ./cmd/spacegate

# Static: no program interpreter (ld.so), so it runs on scratch or
# distroless/static.
if command -v file >/dev/null 2>&1; then
  desc=$(file -b "$out")
  case $desc in
  *"statically linked"* | *"static-pie linked"*) ;;
  *) echo "build.sh: $out is not static: $desc" >&2; exit 1 ;;
  esac
elif command -v readelf >/dev/null 2>&1; then
  if readelf -l "$out" | grep -q INTERP; then
    echo "build.sh: $out asks for a program interpreter: not static" >&2
    exit 1
  fi
else
  echo "build.sh: neither file nor readelf found; not checking that $out is static" >&2
fi

# Runs with an empty environment, as the image's non-root user would,
# when it can be checked (a cross-compiled binary cannot run here).
if [[ $GOOS == $(go env GOHOSTOS) && $GOARCH == $(go env GOHOSTARCH) ]]; then
  got=$(env -i "$out" version)
  case $got in
  "spacegate $VERSION "*) ;;
  *) echo "build.sh: $out version printed \"$got\", want \"spacegate $VERSION ...\"" >&2; exit 1 ;;
  esac
fi

echo "built $out ($VERSION, $GOOS/$GOARCH, static, $(du -h "$out" | cut -f1))"
