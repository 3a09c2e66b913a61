#!/usr/bin/env bash
# Installs what the tests need from PyPI and npm: the official StateFun SDKs that
# tests/sdk.rs drives through the runtime, and moto, the S3-compatible server the blob store's
# S3 tests start (storage/src/blob.rs, `--features s3`): a Python venv at target/sdk/venv and
# the JS SDK at target/sdk/js/node_modules.
# Idempotent: a second run checks the installed versions and returns at once.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
sdk="$root/target/sdk"
venv="$sdk/venv"
js="$sdk/js"

# Pins: the SDK caps protobuf below 4 and its generated code needs >= 3.20; aiohttp 3.14.5
# has wheels for Python 3.9-3.14.
python_packages=(apache-flink-statefun==3.3.0 protobuf==3.20.3 aiohttp==3.14.5 "moto[server]==5.2.5")
js_package=apache-flink-statefun@3.3.0
python="${PYTHON:-python3}"

mkdir -p "$sdk"

stamp="$venv/.statefun-sdk-pins"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "${python_packages[*]}" ]]; then
    echo "sdk setup: python venv up to date ($venv)"
else
    echo "sdk setup: creating python venv $venv with ${python_packages[*]}"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${python_packages[@]}"
    "$venv/bin/python" -c 'import statefun, aiohttp, google.protobuf, moto'
    echo "${python_packages[*]}" > "$stamp"
fi

installed_js="$(node -p "try { require('$js/node_modules/apache-flink-statefun/package.json').version } catch (e) { '' }" 2>/dev/null || true)"
if [[ "$installed_js" == "${js_package#*@}" ]]; then
    echo "sdk setup: js sdk up to date ($js/node_modules/apache-flink-statefun $installed_js)"
else
    echo "sdk setup: installing $js_package into $js"
    mkdir -p "$js"
    npm install --prefix "$js" --no-audit --no-fund --loglevel=error "$js_package"
    node -e "require('$js/node_modules/apache-flink-statefun')"
fi
