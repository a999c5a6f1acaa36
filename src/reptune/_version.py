"""The package version, in a leaf module so that any stage can read it without importing the
package facade (``reptune/__init__.py`` imports the stages themselves)."""

__version__ = "0.1.0"
