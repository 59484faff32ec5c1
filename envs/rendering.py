"""Offscreen frames of the model's fixed cameras, with as little work per frame as MuJoCo allows.

``mujoco.Renderer`` is general: every frame it copies and restores the scene flags, makes
its GL context current, builds a camera object and looks the camera name up, allocates an
output array and flips it in a second copy. At 64 x 64 on a CPU (Mesa llvmpipe) that Python
is a tenth of the frame. ``FrameRenderer`` makes the same MuJoCo calls on the same scene, so
the pixels are identical, but sets everything up once: one camera object per camera, one
read buffer, and the context made current only when another one is.
"""

from __future__ import annotations

from collections.abc import Callable

import mujoco
import numpy as np

MAX_SCENE_GEOMS = 10_000  # as mujoco.Renderer: room for every geom and decoration
_ALL_CATEGORIES = int(mujoco.mjtCatBit.mjCAT_ALL)  # an int converts faster than the enum, per frame


class FrameRenderer:
    """Renders ``size`` x ``size`` uint8 RGB frames of one model's named cameras.

    The GL context takes its offscreen buffer size, shadow map, multisampling and
    tessellation from ``model.vis`` when it is created; set those before constructing.
    """

    def __init__(self, model: mujoco.MjModel, size: int):
        self._context: mujoco.MjrContext | None = None  # set first: close() may run on a failed init
        self._gl: mujoco.GLContext | None = None
        self.model = model
        self.scene = mujoco.MjvScene(model, maxgeom=MAX_SCENE_GEOMS)
        self._rect = mujoco.MjrRect(0, 0, size, size)
        self._pixels = np.empty((size, size, 3), dtype=np.uint8)
        self._cameras: dict[str, mujoco.MjvCamera] = {}
        self._gl = mujoco.GLContext(size, size)
        self._gl.make_current()
        self._current_context = _current_context_query()
        self._own_context = self._current_context() if self._current_context else None
        self._context = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._context)

    def render(self, data: mujoco.MjData, camera: str, option: mujoco.MjvOption) -> np.ndarray:
        """A new (size, size, 3) uint8 frame of ``camera`` (a fixed camera's name), top row first."""
        if self._context is None:
            raise RuntimeError("render called after close")
        mujoco.mjv_updateScene(self.model, data, option, None, self._camera(camera), _ALL_CATEGORIES, self.scene)
        self._make_current()
        mujoco.mjr_render(self._rect, self.scene, self._context)
        mujoco.mjr_readPixels(self._pixels, None, self._rect, self._context)
        return self._pixels[::-1].copy()  # OpenGL's rows run bottom-up

    def close(self) -> None:
        if self._context is not None and self._gl is not None:
            # MjrContext frees its GL objects in the current context; as_current also copes
            # with an EGL display already shut down at interpreter exit.
            with self._gl.as_current():
                self._context.free()
        self._context = None
        if self._gl is not None:
            self._gl.free()
            self._gl = None

    def __del__(self) -> None:
        self.close()

    def _camera(self, name: str) -> mujoco.MjvCamera:
        camera = self._cameras.get(name)
        if camera is None:
            camera = mujoco.MjvCamera()
            camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
            camera.fixedcamid = self.model.camera(name).id
            self._cameras[name] = camera
        return camera

    def _make_current(self) -> None:
        """Makes this renderer's context current unless it already is. Another renderer (the
        video camera, a second env in this process) may have switched it since the last frame."""
        if self._current_context is None or self._current_context() != self._own_context:
            assert self._gl is not None
            self._gl.make_current()


def _current_context_query() -> Callable[[], int] | None:
    """A function returning the thread's current EGL context as an int, or None on other GL
    backends (there the context is made current before every frame)."""
    if mujoco.GLContext.__module__ != "mujoco.egl":
        return None
    from mujoco.egl import egl_ext

    def current() -> int:
        context = egl_ext.eglGetCurrentContext()
        return context.address if context else 0

    return current
