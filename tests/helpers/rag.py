"""A small documentation tree for the retrieval tests (tests/unit/test_rag.py, tests/sessions/test_rag_sessions.py)."""

from __future__ import annotations

from pathlib import Path

DOCS = {
    "sphere.md": "# Spheres\n\nOrbit draws spheres with `orbit.actor.sphere(centers, colors, radii=1.0)`.\n\n"
                 "## Size\n\nThe `radii` argument sets the radius of each sphere.\n",
    "install.md": "# Installing\n\nInstall with `pip install orbit3d`. Orbit needs Python 3.10.\n\n"
                  "## Headless\n\nSet ORBIT_OFFSCREEN=1 to render without a display.\n",
    "api/window.py": '"""Windows of Orbit."""\n\n\ndef record(scene, out_path="orbit.png"):\n'
                     '    """Render the scene off screen and save it as a PNG image."""\n',
}


def write_docs(root: Path, docs: dict[str, str] = DOCS) -> Path:
    for rel, text in docs.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root
