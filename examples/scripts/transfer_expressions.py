"""Put the expressions of one tracked video on another identity (a photo or another track).

    python examples/scripts/transfer_expressions.py SOURCE.track.npz TARGET(.jpg|.track.npz) OUT.usd

Same as `nphm-track transfer SOURCE TARGET --out OUT.usd`. Make SOURCE with
`nphm-track examples/synthetic_head/video_0000.mp4 --out anim.usd` (writes anim.track.npz).
"""

import sys
from pathlib import Path

from tracker.bake import export_track
from tracker.pipeline import track_path_for
from tracker.transfer import transfer_expressions

source, target, out = (Path(a) for a in sys.argv[1:4])
track = transfer_expressions(source, target, track_path_for(out))
result = export_track(track, out)
print(f"wrote {result.path} ({result.n_frames} frames) and {track_path_for(out)}")
