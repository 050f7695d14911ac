set -e
mkdir -p "$1/nested"
echo "generated in the build stage" > "$1/result.txt"
echo "deep" > "$1/nested/deep.txt"
chmod 0600 "$1/nested/deep.txt"
ln -s result.txt "$1/result.link"
ln "$1/result.txt" "$1/result.hard"
ln -s nested "$1/nested.link"
