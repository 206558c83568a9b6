"""The error types: FoleyError, meant for the user (the CLI prints it as one line, without a
traceback), and FaultyVideo, a bad input video that is recorded (failures.jsonl), never fatal."""


class FoleyError(Exception):
    """A user-facing error (bad flag, bad file, refused cache). The message is the whole story."""


# Reasons a video is faulty (docs/design.md); the cache's failures.jsonl uses these words.
REASONS = ("missing", "unreadable", "no_video_stream", "no_audio_stream", "decode_error",
           "too_short", "silent_audio")


class FaultyVideo(Exception):
    """A video that cannot give a clip. `reason` is one of REASONS; `detail` says what happened;
    `path` is the video's file when the caller knows it (pipeline.decoding.load_entry sets it)."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in REASONS:      # a programming error, never a data problem: fail loudly
            raise ValueError(f"FaultyVideo reason must be one of {REASONS}, got {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.path = ""

    def record(self, video_id: str) -> dict:
        """The failures.jsonl line of this video: {id, path, reason, detail}."""
        return {"id": video_id, "path": self.path, "reason": self.reason, "detail": self.detail}
