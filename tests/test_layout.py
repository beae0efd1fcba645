"""The package's layout: no import loop, no import running back up the layers
config -> data -> models -> run plumbing and evaluation -> training -> modes (see
docs/DESIGN.md), and the models never reading the configuration."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = [  # lowest first; a module may import its own layer or lower ones
    ("ean_tf.config", "ean_tf.schedules", "ean_tf.files"),
    ("ean_tf.data",),
    ("ean_tf.models",),
    ("ean_tf.build", "ean_tf.runs", "ean_tf.evaluate", "ean_tf.visualize"),
    ("ean_tf.served", "ean_tf.pretrained"),
    ("ean_tf.train", "ean_tf.pretrain", "ean_tf.predict"),
    ("ean_tf.modes",),
]


def _modules() -> dict[str, str]:
    out = {}
    for folder, _, files in os.walk(os.path.join(ROOT, "ean_tf")):
        for file in files:
            if file.endswith(".py"):
                path = os.path.join(folder, file)
                name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                out[name.removesuffix(".__init__")] = path
    return out


def _imports(modules: dict[str, str]) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (at any depth of its code)."""
    edges = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom) and node.module:
                subs = [f"{node.module}.{a.name}" for a in node.names]
                found |= {s for s in subs if s in modules}
                if any(s not in modules for s in subs):
                    found.add(node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        edges[name] = {m for m in found if m in modules and m != name}
    return edges


def _layer(module: str) -> int | None:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None  # the package itself


def test_no_import_loop():
    edges = _imports(_modules())
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges[node]):
            assert state.get(nxt) != "open", " -> ".join(path + [nxt])
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_no_import_runs_back_up_the_layers():
    edges = _imports(_modules())
    upward = [
        f"{a} -> {b}"
        for a, targets in edges.items()
        for b in targets
        if _layer(a) is not None and _layer(b) is not None and _layer(b) > _layer(a)
    ]
    assert upward == []
    # The models never read the input pipeline, nor the command line's schema.
    assert not [
        (a, b)
        for a, targets in edges.items()
        for b in targets
        if a.startswith("ean_tf.models")
        and (b == "ean_tf.data.pipeline" or b.startswith("ean_tf.config"))
    ]


def test_the_models_choice_lists_are_the_flags():
    """The models keep their own lists (they never read the configuration); the
    flags accept exactly those values."""
    from ean_tf import config
    from ean_tf.models import backbones, input_norm

    assert config.BACKBONES == backbones.BACKBONE_NAMES
    assert config.INPUT_NORMS == input_norm.INPUT_NORMS
