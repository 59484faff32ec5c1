// The demo page: one WebSocket to the server (vla/demo/app.py); commands out, frames in.
// Every text from the server or the person goes through textContent, never innerHTML.
"use strict";

const $ = (id) => document.getElementById(id);
const CLIENT_MAX_CHARS = 100000; // longer text is refused here, before it could exceed the socket's limit
let info = { max_instruction_length: 256, max_seed: 2147483647 };
let socket = null;
let running = false;
let framesReceived = 0;
let fillFromScene = false;

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function setStatus(text) {
  $("status").textContent = text;
}

function setRunning(value) {
  running = value;
  $("pause").disabled = !value;
  $("run").disabled = value;
  $("step").disabled = value;
  $("expert").disabled = value;
}

function settings(driver) {
  return {
    task: $("task").value,
    seed: $("seed").value.trim(),
    instruction: $("instruction").value,
    driver: driver,
  };
}

function send(type, driver = "policy") {
  if (!socket || socket.readyState !== WebSocket.OPEN) {
    showError("not connected to the demo server: reconnecting, try again in a moment");
    return;
  }
  const message = { type: type, ...settings(driver) };
  if (message.instruction.length > CLIENT_MAX_CHARS) {
    showError(`the instruction has ${message.instruction.length} characters: at most ` +
      `${info.max_instruction_length} are allowed`);
    return;
  }
  showError("");
  if (type === "run") setRunning(true);
  socket.send(JSON.stringify(message));
}

function updateCount() {
  const n = $("instruction").value.length;
  const limit = info.max_instruction_length;
  $("char-count").textContent = `${n} / ${limit} characters` + (n > limit ? ": too long" : "");
  $("char-count").classList.toggle("error", n > limit);
}

function showFrame(frame) {
  framesReceived += 1;
  $("frames-received").textContent = String(framesReceived);
  $("frame").src = frame.image;
  $("view").src = frame.view;
  $("step-count").textContent = String(frame.step);
  $("success").textContent = frame.success ? "yes" : frame.done ? "no" : "not yet";
  $("reward").textContent = frame.reward.toFixed(3);
  $("tokens").textContent = frame.tokens ? frame.tokens.join(" ") : "-";
  $("action").textContent = frame.action ? frame.action.map((a) => a.toFixed(2)).join(" ") : "-";
  // image coordinates in [-1, 1], u right, v down; target first, then its destination
  const points = (list) => list.map((p) => `(${p[0].toFixed(2)}, ${p[1].toFixed(2)})`).join(" ");
  const read = frame.keypoints ? `read ${points(frame.keypoints)}` : "this policy has no keypoint reader";
  $("keypoints").textContent = `${read}; true ${points(frame.true_keypoints)}`;
  if (frame.read_as) $("read-as").textContent = frame.read_as;
  if (frame.step > 0) $("policy-message").textContent = frame.message || (frame.stopped ? "stopped" : "acting");
  if (frame.done) {
    const r = frame.result;
    $("result").dataset.state = r.success ? "success" : "failure";
    $("result").textContent = `${r.success ? "Success" : "Failure"}: ${r.reason}`;
    setRunning(false);
  }
}

function showEpisode(episode) {
  framesReceived = 0;
  $("result").dataset.state = "running";
  $("result").textContent = "";
  $("max-steps").textContent = String(episode.max_steps);
  $("read-as").textContent = "-";
  $("policy-message").textContent = episode.driver === "expert" ? "the scripted expert drives" : "-";
  const told = episode.driver === "expert" ? "the scripted expert (it reads the scene's task, not words)" :
    `the policy, told "${episode.instruction}"`;
  $("episode-info").textContent = `${episode.task}, seed ${episode.seed}: ${told}. ` +
    `Success is judged on the scene's task: "${episode.scene_instruction}".`;
  if (fillFromScene) {
    $("instruction").value = episode.scene_instruction;
    fillFromScene = false;
    updateCount();
  }
  showFrame(episode.frame);
}

function onMessage(event) {
  const message = JSON.parse(event.data);
  if (message.type === "frame") showFrame(message);
  else if (message.type === "episode") showEpisode(message);
  else if (message.type === "status") {
    setStatus(message.text);
    setRunning(message.running);
  } else if (message.type === "error") {
    fillFromScene = false;
    showError(message.message);
    setRunning(Boolean(message.running));
  }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/ws`);
  socket.onmessage = onMessage;
  socket.onclose = (event) => {
    setRunning(false);
    if (event.code === 4000) { // closed for idling (vla/demo/app.py IDLE_CLOSE): a reload comes back
      setStatus("disconnected after a long idle time: reload the page to go on");
    } else if (event.code === 1013) { // every place taken: ask again, gently
      setStatus("the demo is serving as many pages as it may: trying again in 5 s...");
      setTimeout(connect, 5000);
    } else {
      setStatus("disconnected from the demo server: reconnecting...");
      setTimeout(connect, 1000);
    }
  };
}

async function start() {
  try {
    info = await (await fetch("/api/info")).json();
  } catch (e) {
    showError("could not reach the demo server: is `python -m vla.demo` running?");
  }
  for (const task of info.tasks || []) {
    const option = document.createElement("option");
    option.value = task;
    option.textContent = task;
    $("task").appendChild(option);
  }
  $("checkpoint").textContent = info.checkpoint ? `policy: ${info.checkpoint}` : "";
  $("instruction").addEventListener("input", updateCount);
  $("instruction").addEventListener("keydown", (e) => { if (e.key === "Enter" && !running) send("run"); });
  $("random-seed").onclick = () => { $("seed").value = String(Math.floor(Math.random() * (info.max_seed + 1))); };
  $("suggest").onclick = () => { fillFromScene = true; send("reset", "expert"); };
  $("reset").onclick = () => send("reset");
  $("step").onclick = () => send("step");
  $("run").onclick = () => send("run");
  $("pause").onclick = () => send("pause");
  $("expert").onclick = () => { send("reset", "expert"); send("run", "expert"); };
  updateCount();
  connect();
}

start();
