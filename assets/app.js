// flagstore web UI: progressive enhancements only. Every page works without this file.
"use strict";

// A range slider beside each rollout field, kept in step with it both ways. Added here, not
// in the HTML, so that without JavaScript no control is shown that would do nothing.
function addRolloutSliders() {
  for (const field of document.querySelectorAll("input[data-slider]")) {
    const slider = document.createElement("input");
    slider.type = "range";
    slider.min = field.min;
    slider.max = field.max;
    slider.step = field.step;
    slider.value = field.value;
    slider.setAttribute("aria-label", field.dataset.slider);
    slider.addEventListener("input", () => {
      field.value = slider.value;
      field.dispatchEvent(new Event("input", { bubbles: true }));
    });
    field.addEventListener("input", () => {
      slider.value = field.value;
    });
    field.after(slider);
  }
}

// The audit chain's hash input for one stored row, as README.md and src/audit.rs define it:
// prev_hash, then each column: NULL "N", integer "I<digits>;", text "T<byte length>:<text>".
const COLUMNS = [
  ["id", "integer"], ["ts"], ["kind"], ["actor"], ["action"], ["flag"], ["context_key"],
  ["result", "integer"], ["source"], ["reason"], ["detail"],
];
const utf8 = new TextEncoder();

function hashInput(row) {
  let text = row.prev_hash;
  for (const [name, type] of COLUMNS) {
    const value = row[name];
    if (value === null || value === undefined) {
      text += "N";
    } else if (type === "integer") {
      text += "I" + value + ";";
    } else {
      text += "T" + utf8.encode(value).length + ":" + value;
    }
  }
  return utf8.encode(text);
}

async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

// Re-hashes the stored rows behind the audit page with WebCrypto: each row's hash must match
// its columns, and each row's prev_hash the hash of the row before it where both are sent
// (the page's rows, and the rows just before and after them, marked "edge"). It says what it
// checked and no more: rows outside the page are `flagstore audit verify`'s to check.
async function verifyChain() {
  const panel = document.getElementById("chain");
  if (!panel) {
    return;
  }
  const status = document.getElementById("chain-status");
  if (!window.crypto || !crypto.subtle) {
    status.textContent =
      "This browser offers no WebCrypto on this address (it needs HTTPS or localhost): " +
      "nothing was re-hashed here.";
    return;
  }
  const rows = JSON.parse(panel.dataset.rows).sort((a, b) => a.id - b.id);
  if (rows.length === 0) {
    status.textContent = "No rows to verify on this page.";
    return;
  }
  let previous = null;
  for (const row of rows) {
    const computed = await sha256Hex(hashInput(row));
    if (computed !== row.hash) {
      return fail(status, `Row ${row.id} was altered: its hash does not match its contents.`);
    }
    if (previous && previous.id + 1 === row.id && row.prev_hash !== previous.hash) {
      return fail(status, `Row ${row.id} does not follow row ${previous.id}: the chain is broken.`);
    }
    previous = row;
  }
  const shown = rows.filter((r) => !r.edge);
  const [first, last] = [shown[0], shown[shown.length - 1]];
  const edges = rows.filter((r) => r.edge).map((r) => `row ${r.id}`);
  const checked = last.id - first.id + 1 === shown.length
    ? `${first.id === last.id ? `Row ${first.id} is` : `Rows ${first.id}-${last.id} are`} ` +
      `consistent with each other${edges.length ? ` and with ${edges.join(" and ")}` : ""}`
    : `The ${shown.length} rows shown, between rows ${first.id} and ${last.id}, match their ` +
      "hashes and link to each row next to them that was sent";
  status.textContent =
    `${checked} (re-hashed in this browser; row ${last.id} has hash ${last.hash}). Only these ` +
    "rows were checked: flagstore audit verify checks the whole chain.";
  status.dataset.state = "verified";
  const expected = panel.dataset.checkpointHash;
  if (expected) {
    const id = Number(panel.dataset.checkpointId);
    const row = rows.find((r) => r.id === id);
    const checkpoint = document.getElementById("checkpoint-status");
    if (!row) {
      checkpoint.textContent = `Row ${id} of the checkpoint is not among the rows verified here.`;
    } else if (row.hash === expected) {
      checkpoint.textContent = `Checkpoint matches: row ${id} has hash ${expected}.`;
      checkpoint.dataset.state = "verified";
    } else {
      checkpoint.textContent = `Checkpoint does not match: row ${id} has hash ${row.hash}, ` +
        `the checkpoint says ${expected}.`;
      checkpoint.dataset.state = "failed";
    }
  }
}

function fail(status, message) {
  status.textContent = message;
  status.dataset.state = "failed";
}

document.addEventListener("DOMContentLoaded", () => {
  addRolloutSliders();
  verifyChain();
});
