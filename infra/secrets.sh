# Sourced by the infra scripts: generated secrets, one file each under .local/secrets (mode 0600).
# Nothing here has a default password: a secret is made the first time it is asked for and kept.

SECRETS_DIR="${SECRETS_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.local/secrets}"

# secret NAME: print the secret kept in $SECRETS_DIR/NAME, generating it first if there is none.
secret() {
    local file="$SECRETS_DIR/$1"
    if [[ ! -s "$file" ]]; then
        mkdir -p "$SECRETS_DIR"
        chmod 700 "$SECRETS_DIR"
        (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > "$file")
    fi
    cat "$file"
}
