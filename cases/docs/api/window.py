"""Windows and scenes of the Orbit 3D library (an example package whose docstrings are indexed)."""


class Scene:
    """A collection of actors to render, with a background colour."""

    def add(self, *actors):
        """Add one or more actors (spheres, boxes, lines) to the scene."""

    def background(self, color=(0, 0, 0)):
        """Set the background colour as an (r, g, b) tuple of floats between 0 and 1."""


def record(scene, out_path="orbit.png", size=(300, 300)):
    """Render the scene off screen and save it as a PNG image at out_path, with the given size in pixels."""


def show(scene, title="Orbit", size=(600, 600)):
    """Open an interactive window showing the scene until it is closed."""
