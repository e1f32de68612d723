# edrgate helper: file operations. -p is base64 JSON
# {"op": delete|mkdir|place, "path", "source"}; "place" moves a file PutFile dropped into the
# sensor's Downloads folder to its destination.
param([string]$p = "")
$ErrorActionPreference = "Stop"
function Emit($o) { Write-Output ("EDRGATE-RESULT:" + ($o | ConvertTo-Json -Compress -Depth 6)) }
function Fail($word, $msg, $hr) { Emit ([ordered]@{ ok = $false; error = $word; message = $msg; hresult = $hr }); exit 1 }
try {
    $a = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($p)) | ConvertFrom-Json
    switch ($a.op) {
        "delete" {
            if (-not (Test-Path -LiteralPath $a.path -PathType Leaf)) { Fail "file_not_found" "The system cannot find the file specified: $($a.path)" "0x80070002" }
            Remove-Item -LiteralPath $a.path -Force; Emit ([ordered]@{ ok = $true })
        }
        "mkdir" {
            if (Test-Path -LiteralPath $a.path) { Fail "conflict" "Cannot create a file when that file already exists: $($a.path)" "0x800700B7" }
            New-Item -ItemType Directory -Path $a.path | Out-Null; Emit ([ordered]@{ ok = $true })
        }
        "place" {
            if (-not (Test-Path -LiteralPath $a.source -PathType Leaf)) { Fail "file_not_found" "The uploaded file is missing: $($a.source)" "0x80070002" }
            $parent = Split-Path -Parent $a.path
            if ($parent -and -not (Test-Path -LiteralPath $parent -PathType Container)) { Fail "file_not_found" "The system cannot find the path specified: $parent" "0x80070003" }
            if (Test-Path -LiteralPath $a.path) { Fail "conflict" "Cannot create a file when that file already exists: $($a.path)" "0x800700B7" }
            Move-Item -LiteralPath $a.source -Destination $a.path; Emit ([ordered]@{ ok = $true })
        }
        default { Fail "invalid_request" "unknown op $($a.op)" "" }
    }
} catch [System.UnauthorizedAccessException] {
    Fail "access_denied" $_.Exception.Message "0x80070005"
} catch {
    Fail "command_failed" $_.Exception.Message ('0x{0:X8}' -f $_.Exception.HResult)
}
