"""``netsync keys generate|rotate``: Ed25519 key pairs for signing export files.

A private key is written with mode 0600 and never printed; its public half is written as
``<key id>.pub``, the name the importers' trusted directory expects. Rotation is two deployments
in a fixed order, because a file signed with a key the importers do not trust yet is quarantined:
first every importer trusts the new public key, then the workers sign with the new private key.
"""

from __future__ import annotations

from pathlib import Path

import typer

from app.config import ResponseSettings
from exchange.signing import Signer, write_key_pair
from netsync.cli.output import JsonOption, out, print_json
from netsync.config import ConfigurationError

app = typer.Typer(help="Generate and rotate the export signing keys.", no_args_is_help=True)

PrivateOption = typer.Option(
    None, "--private-key", help="Where to write the private key (default: signing-<key id>.pem)."
)
PublicDirOption = typer.Option(
    None, "--public-dir", help="Directory for <key id>.pub (default: next to the private key)."
)
ForceOption = typer.Option(False, "--force", help="Overwrite an existing private key file.")


def _generate(
    private_key: Path | None, public_dir: Path | None, force: bool, directory: Path = Path()
) -> dict[str, str]:
    signer = Signer.generate()
    private_path = private_key or directory / f"signing-{signer.key_id}.pem"
    if private_path.exists() and not force:
        out.print(f"[red]{private_path} exists[/red]; choose another path or pass --force")
        raise typer.Exit(1)
    public_path = write_key_pair(signer, private_path, public_dir or private_path.parent)
    return {
        "key_id": signer.key_id,
        "private_key": str(private_path.resolve()),
        "public_key": str(public_path.resolve()),
    }


@app.command("generate")
def generate(
    private_key: Path | None = PrivateOption,
    public_dir: Path | None = PublicDirOption,
    force: bool = ForceOption,
    as_json: bool = JsonOption,
) -> None:
    """Write a new key pair: the private key (mode 0600) and <key id>.pub."""
    written = _generate(private_key, public_dir, force)
    if as_json:
        print_json(written)
        return
    out.print(f"key id       {written['key_id']}")
    out.print(f"private key  {written['private_key']}  (mode 0600; keep it on the workers only)")
    out.print(f"public key   {written['public_key']}")


@app.command("rotate")
def rotate(
    private_key: Path | None = PrivateOption,
    public_dir: Path | None = PublicDirOption,
    as_json: bool = JsonOption,
) -> None:
    """Generate the next key pair and print the steps to switch to it without losing a file."""
    settings = ResponseSettings()
    try:
        current: Path | None = settings.signing_key_path
    except ConfigurationError:
        current = None
    current_id = None
    if current is not None and current.exists():
        current_id = Signer.from_pem(current.read_bytes()).key_id
    default_dir = current.parent if current is not None else Path()
    written = _generate(private_key, public_dir, force=False, directory=default_dir)
    steps = [
        f"Trust the new public key on every importer: copy {written['public_key']} into each "
        "importer's NETSYNC_TRUSTED_KEYS_DIR (or append it to NETSYNC_TRUSTED_KEYS), then "
        "restart the importers. Keep the old public key trusted.",
        f"Only then sign with the new key: set NETSYNC_SIGNING_KEY_FILE={written['private_key']} "
        "for every worker and restart the workers.",
        f"Once every file signed with the old key{f' ({current_id})' if current_id else ''} "
        "has been applied (no such file left in the exports directory), remove the old public "
        "key from the importers and delete the old private key.",
    ]
    if as_json:
        print_json({**written, "previous_key_id": current_id, "next_steps": steps})
        return
    out.print(
        f"new key id   {written['key_id']}" + (f" (replaces {current_id})" if current_id else "")
    )
    out.print(f"private key  {written['private_key']}  (mode 0600)")
    out.print(f"public key   {written['public_key']}")
    out.print(
        "\n[bold]Next steps, in this order[/bold] (a file signed with a key the importers do "
        "not trust yet is quarantined):"
    )
    for number, step in enumerate(steps, start=1):
        out.print(f"  {number}. {step}")
