"""``netsync keys generate|rotate``: the key pairs of the exchange.

Signing keys (Ed25519, the default): the Response side signs with the private key, importers
trust ``<key id>.pub``. Encryption keys (``--encryption``, age X25519): the Request side holds
the private key ``<key id>.age.key``, the Response side seals every file to ``<key id>.age.pub``.
A private key is written with mode 0600 and never printed. Rotation is deployments in a fixed
order, because a file the importers cannot verify or open is quarantined: see
``docs/key-rotation.md``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from app.config import ResponseSettings
from exchange.sealing import generate_identity, key_id_of, write_identity, write_recipient
from exchange.signing import Signer, write_key_pair
from netsync.config import ConfigurationError
from ops.cli.output import JsonOption, out, print_json

app = typer.Typer(help="Generate and rotate the export signing keys.", no_args_is_help=True)

PrivateOption = typer.Option(
    None, "--private-key", help="Where to write the private key (default: signing-<key id>.pem)."
)
PublicDirOption = typer.Option(
    None, "--public-dir", help="Directory for <key id>.pub (default: next to the private key)."
)
ForceOption = typer.Option(False, "--force", help="Overwrite an existing private key file.")
EncryptionOption = typer.Option(
    False,
    "--encryption",
    help="An age key pair that seals export files to the Request Network, instead of a "
    "signing key: <key id>.age.key (private, for the importer) and <key id>.age.pub.",
)
PrivateDirOption = typer.Option(
    None, "--private-dir", help="--encryption: directory for <key id>.age.key (default: .)."
)


def _generate_encryption(private_dir: Path | None, public_dir: Path | None) -> dict[str, str]:
    identity, recipient = generate_identity()
    private_path = write_identity(private_dir or Path(), identity, recipient)
    public_path = write_recipient(public_dir or private_path.parent, recipient)
    return {
        "key_id": key_id_of(recipient),
        "private_key": str(private_path.resolve()),
        "public_key": str(public_path.resolve()),
        "recipient": recipient,
    }


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
    encryption: bool = EncryptionOption,
    private_dir: Path | None = PrivateDirOption,
    as_json: bool = JsonOption,
) -> None:
    """Write a new key pair: the private key (mode 0600) and its public half."""
    if encryption:
        written = _generate_encryption(private_dir, public_dir)
        if as_json:
            print_json(written)
            return
        out.print(f"key id       {written['key_id']}")
        out.print(
            f"private key  {written['private_key']}  (mode 0600; the importer's "
            "NETSYNC_DECRYPTION_KEYS_DIR only)"
        )
        out.print(
            f"public key   {written['public_key']}  (the workers' NETSYNC_EXPORT_RECIPIENTS_DIR)"
        )
        return
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


@app.command("rotate-encryption")
def rotate_encryption(
    private_dir: Path | None = PrivateDirOption,
    public_dir: Path | None = PublicDirOption,
    as_json: bool = JsonOption,
) -> None:
    """Generate the Request side's next age key pair and print the steps to switch to it
    without losing a file in flight."""
    written = _generate_encryption(private_dir, public_dir)
    steps = [
        f"Give every importer the new private key: copy {written['private_key']} into its "
        "NETSYNC_DECRYPTION_KEYS_DIR (mode 0600) next to the old one. Importers notice on their "
        "next scan (or on SIGHUP); they now open files sealed to either key.",
        f"Seal to both: add {written['public_key']} to every worker's "
        "NETSYNC_EXPORT_RECIPIENTS_DIR (or append the recipient to NETSYNC_EXPORT_RECIPIENTS) "
        "and restart the workers. Every new file opens with the old key or the new one.",
        "Remove the old public key from the workers and restart them: new files are sealed to "
        "the new key only.",
        "Once no file sealed to the old key only is left to import (the exports directory "
        "holds none from before step 3), remove the old private key from the importers.",
    ]
    if as_json:
        print_json({**written, "next_steps": steps})
        return
    out.print(f"new key id   {written['key_id']}")
    out.print(f"private key  {written['private_key']}  (mode 0600)")
    out.print(f"public key   {written['public_key']}")
    out.print(
        "\n[bold]Next steps, in this order[/bold] (a file no importer can open is quarantined):"
    )
    for number, step in enumerate(steps, start=1):
        out.print(f"  {number}. {step}")
