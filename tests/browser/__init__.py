"""Tests through a real browser: headless Chromium from Debian's ``chromium`` package."""
