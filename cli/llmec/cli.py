"""`llmec`: submit a model, follow its evaluation, read the leaderboard. Every API error is one line."""

from __future__ import annotations

import argparse
import getpass
import sys
import tempfile
from pathlib import Path

from llmec import __version__, config
from llmec.api import ApiError, Client
from llmec.follow import await_scores, describe, follow, format_scores
from llmec.pack import PackError, pack
from llmec.upload import Progress, upload

EXIT_OK, EXIT_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


def _client(args) -> Client:
    cfg = config.load(server=args.server, token=args.token)
    return Client(cfg.server, cfg.token)


def _require_token(client: Client) -> None:
    if not client.token:
        raise ApiError(
            0,
            "not_authenticated",
            "No API token: create one on your profile page, then set LLMEC_TOKEN or run `llmec login`.",
        )


# Commands ------------------------------------------------------------------------------------


def cmd_login(args) -> int:
    cfg = config.load(server=args.server)
    server = args.server or input(f"Portal address [{cfg.server}]: ").strip() or cfg.server
    token = args.token or getpass.getpass("API token (from your profile page): ").strip()
    client = Client(server, token)
    me = client.get("me/")
    path = config.save(server.rstrip("/"), token)
    team = (me.get("team") or {}).get("name")
    print(f"Logged in to {server} as {me.get('email')}{f' (team {team})' if team else ''}; saved to {path}.")
    return EXIT_OK


def cmd_whoami(args) -> int:
    client = _client(args)
    _require_token(client)
    me = client.get("me/")
    team = (me.get("team") or {}).get("name") or "no team"
    print(f"{me.get('email')} · {team} · {client.server}")
    return EXIT_OK


def cmd_submit(args) -> int:
    client = _client(args)
    _require_token(client)
    model = Path(args.model)
    with tempfile.TemporaryDirectory(prefix="llmec-") as tmp:
        archive = pack(model, Path(tmp) / f"{model.resolve().name or 'model'}.tar.gz")
        print(f"Packed {model} into {archive.name} ({archive.stat().st_size:,} bytes).", flush=True)
        payload = {
            "track": args.track,
            "base_model": args.base,
            "finetune_gpu_hours": args.hours,
            "recipe_url": args.recipe,
            "datasets": "\n".join(args.datasets or []),
            "notes": args.notes or "",
        }
        created = client.post("submissions/", payload)
        submission_id = created["id"]
        print(f"Created submission #{submission_id} on track {args.track}.", flush=True)
        _upload(client, created, archive, checksum=args.checksum)
    print(f"Uploaded. Follow it any time with `llmec status {submission_id}`.", flush=True)
    if args.no_follow:
        return EXIT_OK
    return _follow_to_end(client, submission_id, args.interval)


def cmd_resume(args) -> int:
    """Finish an interrupted upload: the same folder packs to the same bytes, so the server's offset holds."""
    client = _client(args)
    _require_token(client)
    submission = client.get(f"submissions/{args.id}/")
    if not submission.get("upload"):
        print(f"Submission #{args.id} is {submission.get('status')}: nothing to upload.")
        return EXIT_OK
    with tempfile.TemporaryDirectory(prefix="llmec-") as tmp:
        archive = pack(Path(args.model), Path(tmp) / "model.tar.gz")
        _upload(client, submission, archive, checksum=args.checksum)
    print(f"Uploaded. Follow it any time with `llmec status {args.id}`.", flush=True)
    if args.no_follow:
        return EXIT_OK
    return _follow_to_end(client, args.id, args.interval)


def _upload(client: Client, submission: dict, archive: Path, *, checksum: bool) -> str:
    target = submission.get("upload") or {}
    creation_url = client.url(target.get("creation_url") or "uploads/")
    return upload(
        archive=archive,
        creation_url=creation_url,
        headers=client.auth_headers,
        metadata={"filename": archive.name, **{k: str(v) for k, v in (target.get("metadata") or {}).items()}},
        upload_url=client.url(target["url"]) if target.get("url") else None,
        progress=Progress(archive.stat().st_size),
        checksum=checksum,
    )


def _follow_to_end(client: Client, submission_id: int, interval: float) -> int:
    print("Following the evaluation (Ctrl-C stops following; the evaluation goes on).", flush=True)
    try:
        final = follow(client, submission_id, interval=interval)
        final = await_scores(client, final, interval=interval)
    except KeyboardInterrupt:
        print(f"\nStopped following. `llmec status {submission_id}` shows where it is.", file=sys.stderr)
        return EXIT_INTERRUPTED
    if final.get("status") == "scored":
        print(f"Scored. Submission #{submission_id}:")
        print(format_scores(final))
        return EXIT_OK
    return EXIT_FAILED


def cmd_status(args) -> int:
    client = _client(args)
    _require_token(client)
    if args.id is None:
        page = client.get("submissions/", track=args.track, page_size=args.limit)
        rows = page.get("results", []) if isinstance(page, dict) else page
        if not rows:
            print("No submissions yet.")
            return EXIT_OK
        print(f"{'ID':>6}  {'TRACK':<8} {'STATUS':<13} {'SCORE':>7}  {'CREATED':<20} BASE")
        for row in rows:
            scores = row.get("scores") or {}
            final_score = scores.get("final") if scores.get("final") is not None else scores.get("open_score")
            print(
                f"{row['id']:>6}  {row.get('track', ''):<8} {row.get('status', ''):<13} "
                f"{'—' if final_score is None else f'{final_score:.4f}':>7}  "
                f"{str(row.get('created_at', ''))[:19]:<20} {row.get('base_model', '')}"
                f"{'  ★ final entry' if row.get('is_final') else ''}"
            )
        return EXIT_OK
    if args.follow:
        return _follow_to_end(client, args.id, args.interval)
    submission = client.get(f"submissions/{args.id}/")
    print(describe(submission))
    for event in submission.get("history", []):
        reason = f" — {event['reason']}" if event.get("reason") else ""
        print(
            f"  {str(event.get('created_at', ''))[:19]}  {event.get('from_status') or '·'} → {event['to_status']}{reason}"
        )
    if submission.get("status") == "scored":
        print(format_scores(submission))
    log_tail = submission.get("log_tail")
    if log_tail and args.log:
        print("Log (last lines):")
        print(log_tail if isinstance(log_tail, str) else "\n".join(log_tail))
    return EXIT_OK if submission.get("status") != "failed" else EXIT_FAILED


def cmd_cancel(args) -> int:
    client = _client(args)
    _require_token(client)
    submission = client.post(f"submissions/{args.id}/cancel/", {"reason": args.reason or ""})
    print(f"Submission #{args.id} is now {submission.get('status', 'cancelled')}.")
    return EXIT_OK


def cmd_leaderboard(args) -> int:
    client = _client(args)
    page = client.get(f"leaderboards/{args.track}/", page_size=args.limit, ordering=args.sort)
    rows = page.get("results", [])
    hidden = page.get("hidden_visible")
    state = "provisional" if page.get("provisional") else "final"
    print(f"Leaderboard {args.track} ({state}; {'final scores' if hidden else 'open suite only until revealed'})")
    if not rows:
        print("No scored entries yet.")
        return EXIT_OK
    aspects = ("accuracy", "robustness", "fairness", "bias", "efficiency")
    print(f"{'#':>3}  {'TEAM':<24} {'SCORE':>7} " + " ".join(f"{a[:6].upper():>6}" for a in aspects) + "  BASE")
    for row in rows:
        suite = (row.get("hidden") if hidden and row.get("hidden") else None) or row.get("open") or {}
        score = row.get("final_score") if hidden else row.get("open_score")
        cells = " ".join(f"{'—' if suite.get(a) is None else f'{suite[a]:.3f}':>6}" for a in aspects)
        place = row.get("rank") or row.get("position")
        badge = "  (student-eligible)" if row.get("student_eligible") else ""
        print(
            f"{place:>3}  {row['team']['name'][:24]:<24} {'—' if score is None else f'{score:.4f}':>7} {cells}"
            f"  {row.get('base_model', '')}{badge}"
        )
    if page.get("next"):
        print(f"… {page['count'] - len(rows)} more (use --limit).")
    return EXIT_OK


def cmd_config(args) -> int:
    cfg = config.load(server=args.server, token=args.token)
    token = f"{cfg.token[:12]}… (from {cfg.source})" if cfg.token else "none"
    print(f"server: {cfg.server}\ntoken:  {token}\nfile:   {config.config_path()}")
    return EXIT_OK


# Parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmec", description="LLM Efficiency Challenge command line.")
    parser.add_argument("--version", action="version", version=f"llmec {__version__}")
    parser.add_argument("--server", help="portal address (default: LLMEC_SERVER or the config file)")
    parser.add_argument("--token", help="API token (default: LLMEC_TOKEN or the config file)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    login = commands.add_parser("login", help="store the server and token in the config file")
    login.set_defaults(func=cmd_login)
    commands.add_parser("whoami", help="check the token: who am I, which team").set_defaults(func=cmd_whoami)
    commands.add_parser("config", help="show where the server and token come from").set_defaults(func=cmd_config)

    submit = commands.add_parser("submit", help="pack, upload and follow a model")
    submit.add_argument("--track", required=True, help="track slug, e.g. 4090 or a100")
    submit.add_argument("--model", required=True, help="the model folder (config.json or adapter_config.json)")
    submit.add_argument("--base", required=True, help="base model name from the allow-list, e.g. mistral-7b")
    submit.add_argument("--hours", required=True, type=float, help="fine-tuning GPU-hours on the track's GPU")
    submit.add_argument("--recipe", required=True, help="URL of the training recipe (repository and commit)")
    submit.add_argument("--datasets", nargs="*", help="datasets used, with their licences")
    submit.add_argument("--notes", help="free text for the organizers")
    _follow_options(submit)
    submit.set_defaults(func=cmd_submit)

    resume = commands.add_parser("resume", help="finish an interrupted upload of submission ID")
    resume.add_argument("id", type=int)
    resume.add_argument("--model", required=True, help="the same model folder as at submit")
    _follow_options(resume)
    resume.set_defaults(func=cmd_resume)

    status = commands.add_parser("status", help="my submissions, or one submission in detail")
    status.add_argument("id", type=int, nargs="?")
    status.add_argument("--track")
    status.add_argument("--limit", type=int, default=20)
    status.add_argument("--follow", action="store_true", help="keep following until it ends")
    status.add_argument("--log", action="store_true", help="print the log tail")
    status.add_argument("--interval", type=float, default=5.0, help=argparse.SUPPRESS)
    status.set_defaults(func=cmd_status)

    board = commands.add_parser("leaderboard", help="a track's standings")
    board.add_argument("--track", required=True)
    board.add_argument("--limit", type=int, default=20)
    board.add_argument("--sort", help="column to sort by, e.g. -accuracy")
    board.set_defaults(func=cmd_leaderboard)

    cancel = commands.add_parser("cancel", help="cancel a submission of my team")
    cancel.add_argument("id", type=int)
    cancel.add_argument("--reason")
    cancel.set_defaults(func=cmd_cancel)
    return parser


def _follow_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-follow", action="store_true", help="stop after the upload")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between status checks")
    parser.add_argument("--checksum", action="store_true", help="send a tus checksum with every chunk")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ApiError as error:
        print(f"llmec: {error}", file=sys.stderr)
        return EXIT_ERROR
    except (PackError, config.ConfigError) as error:
        print(f"llmec: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\nllmec: interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
