// The rating opens only once the clip has played to its end (the audio element's "ended" event).
// There are no seekable controls, so the end cannot be reached by skipping.
document.addEventListener("DOMContentLoaded", () => {
  const clip = document.getElementById("clip");
  const play = document.getElementById("play");
  const playhead = document.getElementById("playhead");
  const status = document.getElementById("status");
  const rating = document.getElementById("rating");
  const next = document.getElementById("next");
  let heard = false;

  play.addEventListener("click", () => {
    clip.currentTime = 0;
    clip.play().then(() => {
      play.disabled = true;
      status.textContent = "Playing…";
    }).catch((error) => {
      status.textContent = "The piece could not be played (" + error.name + "). Check your sound and press play again.";
    });
  });
  clip.addEventListener("timeupdate", () => {
    if (clip.duration > 0) playhead.value = clip.currentTime / clip.duration;
  });
  clip.addEventListener("ended", () => {
    heard = true;
    playhead.value = 1;
    play.disabled = false;
    play.textContent = "\u21BB Play again";
    rating.disabled = false;
    status.textContent = "Now rate the piece.";
  });
  clip.addEventListener("error", () => {
    status.textContent = "The piece could not be loaded. Please reload the page.";
  });
  rating.addEventListener("change", () => {
    next.disabled = !heard;
  });
  document.getElementById("answer").addEventListener("submit", () => {
    next.disabled = true;  // one answer per click
  });
});
