"""What the package holds and imports: the library only; no torch, no transformers, no sys.path edits;
the model math imports with NumPy alone."""

import ast
import subprocess
import sys
from pathlib import Path

import minibridge

PACKAGE = Path(minibridge.__file__).resolve().parent

# What `ls minibridge/` may show: the library's modules, the assignment tooling and its data.
LIBRARY = {"__init__.py", "__main__.py", "backend.py", "ops.py", "vision.py", "text.py", "bridge.py", "heads.py",
           "model.py", "tokenizer.py", "unicode_classes.py", "image_processing.py", "processing.py", "config.py",
           "weights.py", "hub.py", "fetch.py", "convert.py", "modeling.py", "optim.py", "infer.py", "finetune.py", "assignments", "backward",
           "index.py", "embedding.py", "retrieval.py", "scale.py"}


def test_the_package_lists_only_library_modules():
    entries = {p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    assert entries == LIBRARY, f"unexpected: {sorted(entries - LIBRARY)}; missing: {sorted(LIBRARY - entries)}"


def test_no_module_imports_torch_or_transformers_or_edits_sys_path():
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in ("torch", "transformers", "tokenizers"), \
                    f"{path.relative_to(PACKAGE)}:{node.lineno} imports {name}"
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
                raise AssertionError(f"{path.relative_to(PACKAGE)}:{node.lineno} touches sys.path")


def test_model_and_ops_import_with_numpy_alone():
    """Pillow, huggingface_hub and safetensors are needed for files and downloads, not for the math."""
    code = ("import sys\n"
            "for name in ('PIL', 'huggingface_hub', 'safetensors', 'regex'):\n"
            "    sys.modules[name] = None  # importing it now raises ImportError\n"
            "import minibridge.model, minibridge.ops, minibridge.modeling\n"
            "import minibridge as mb\n"
            "assert callable(mb.infer) and mb.BridgeTowerModel.__name__ == 'BridgeTowerModel'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_public_names_resolve():
    for name in minibridge.__all__:
        assert getattr(minibridge, name) is not None, name
