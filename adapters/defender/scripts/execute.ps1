# edrgate helper: execute. -p is base64 JSON {"command_line", "wait", "working_directory"}.
# With wait, stdout and stderr are captured (first 1 MiB) and the exit code reported.
param([string]$p = "")
$ErrorActionPreference = "Stop"
function Emit($o) { Write-Output ("EDRGATE-RESULT:" + ($o | ConvertTo-Json -Compress -Depth 6)) }
try {
    $a = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($p)) | ConvertFrom-Json
    $psi = New-Object System.Diagnostics.ProcessStartInfo
    $psi.FileName = "$env:SystemRoot\System32\cmd.exe"
    $psi.Arguments = "/c " + $a.command_line
    $psi.UseShellExecute = $false
    $psi.CreateNoWindow = $true
    if ($a.working_directory) { $psi.WorkingDirectory = $a.working_directory }
    if ($a.wait) { $psi.RedirectStandardOutput = $true; $psi.RedirectStandardError = $true }
    $proc = [System.Diagnostics.Process]::Start($psi)
    if (-not $a.wait) { Emit ([ordered]@{ ok = $true; pid = [uint64]$proc.Id }); exit 0 }
    $out = $proc.StandardOutput.ReadToEndAsync(); $err = $proc.StandardError.ReadToEndAsync()
    $proc.WaitForExit()
    $text = $out.Result + $err.Result
    if ($text.Length -gt 1048576) { $text = $text.Substring(0, 1048576) }
    Emit ([ordered]@{ ok = $true; pid = [uint64]$proc.Id; exit_code = [int64]$proc.ExitCode; output = $text })
} catch {
    Emit ([ordered]@{ ok = $false; error = "command_failed"; message = $_.Exception.Message; hresult = ('0x{0:X8}' -f $_.Exception.HResult) }); exit 1
}
