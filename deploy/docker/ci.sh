#!/usr/bin/env bash
# deploy/docker/ci.sh: check the image build. With a Docker engine, build
# the Dockerfile. Without one, do what its build stage does on a copy of
# the build context that Dockerfile.dockerignore lets through (so a file
# the build needs but the context leaves out fails here too), then run the
# binary as the runtime stage would: uid/gid 65532, empty environment, no
# shell, from an empty working directory.
set -euo pipefail

cd "$(dirname "$0")/../.."

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  echo "docker: building deploy/docker/Dockerfile"
  DOCKER_BUILDKIT=1 docker build -f deploy/docker/Dockerfile --build-arg VERSION=ci -t spacegate:ci .
  docker run --rm spacegate:ci version
  exit 0
fi
echo "no Docker engine: running the Dockerfile's build steps as a script"

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT

# The context: the forms Dockerfile.dockerignore uses: "**" (leave out
# everything), "!PATH" (put PATH back), "**/GLOB" (leave out matching names).
# Anything else is an error here, so the two cannot drift apart unnoticed.
includes=() excludes=()
while IFS= read -r line || [[ -n $line ]]; do
  line=${line%%#*}
  line=${line%"${line##*[![:space:]]}"}
  case $line in
  "" | "**") ;;
  "!"*) includes+=("${line#!}") ;;
  "**/"*) excludes+=("${line#\*\*/}") ;;
  *) echo "ci.sh: Dockerfile.dockerignore line not understood here: $line" >&2; exit 1 ;;
  esac
done <deploy/docker/Dockerfile.dockerignore
for p in "${includes[@]}"; do
  p=${p%/}
  mkdir -p "$ctx/$(dirname "$p")"
  cp -a "$p" "$ctx/$p"
done
for g in "${excludes[@]}"; do
  g=${g%/}
  find "$ctx" -name "$g" -prune -exec rm -rf {} +
done

# The build stage: the same script, in the context copy.
(cd "$ctx" && VERSION=ci deploy/docker/build.sh /tmp/spacegate-image-build/spacegate)
bin=/tmp/spacegate-image-build/spacegate

# The runtime stage: as 65532 with nothing around it.
empty=$(mktemp -d)
chmod 0755 "$empty" "$(dirname "$bin")"
run=(env -i "$bin")
if [[ $(id -u) == 0 ]] && command -v setpriv >/dev/null 2>&1; then
  run=(setpriv --reuid 65532 --regid 65532 --clear-groups env -i "$bin")
fi
(cd "$empty" && "${run[@]}" version)
# serve without a config fails with the reason, not a crash.
if out=$(cd "$empty" && "${run[@]}" serve 2>&1); then
  echo "ci.sh: serve without a config succeeded" >&2
  exit 1
fi
case $out in
*"spacegate.yaml"*) ;;
*) echo "ci.sh: serve without a config said: $out" >&2; exit 1 ;;
esac
rm -rf "$empty" "$(dirname "$bin")"
echo "image build steps: ok"
