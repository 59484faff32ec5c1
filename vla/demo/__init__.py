"""The interactive demo page (``python -m vla.demo checkpoint=...``): pick a task and a scene,
type an instruction, and watch the policy (or the scripted expert) act, frame by frame, with
its action tokens, keypoints and success. Uses ``envs`` and the model core: not part of the core."""
