# edrgate helper: execute. -p is base64 JSON {"command_line", "wait", "working_directory"}.
# With wait, stdout and stderr are captured (first 1 MiB) and the exit code reported.
# Without wait, the process is created by WMI (Win32_Process.Create), not as a child of this
# script: a child would sit in the live-response session's job object and be killed when the
# session ends; one created by the WMI service is outside it and keeps running.
param([string]$p = "")
$ErrorActionPreference = "Stop"
function Emit($o) { Write-Output ("EDRGATE-RESULT:" + ($o | ConvertTo-Json -Compress -Depth 6)) }
try {
    $a = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($p)) | ConvertFrom-Json
    $cmd = "$env:SystemRoot\System32\cmd.exe"
    if (-not $a.wait) {
        $create = @{ CommandLine = "`"$cmd`" /c " + $a.command_line }
        if ($a.working_directory) { $create.CurrentDirectory = [string]$a.working_directory }
        $r = Invoke-CimMethod -ClassName Win32_Process -MethodName Create -Arguments $create
        if ($r.ReturnValue -ne 0) {
            $word = switch ([int]$r.ReturnValue) { 2 { "access_denied" } 3 { "access_denied" } 9 { "file_not_found" } default { "command_failed" } }
            Emit ([ordered]@{ ok = $false; error = $word; message = "Win32_Process.Create returned $($r.ReturnValue)" }); exit 1
        }
        Emit ([ordered]@{ ok = $true; pid = [uint64]$r.ProcessId }); exit 0
    }
    $psi = New-Object System.Diagnostics.ProcessStartInfo
    $psi.FileName = $cmd
    $psi.Arguments = "/c " + $a.command_line
    $psi.UseShellExecute = $false
    $psi.CreateNoWindow = $true
    if ($a.working_directory) { $psi.WorkingDirectory = $a.working_directory }
    $psi.RedirectStandardOutput = $true; $psi.RedirectStandardError = $true
    $proc = [System.Diagnostics.Process]::Start($psi)
    $out = $proc.StandardOutput.ReadToEndAsync(); $err = $proc.StandardError.ReadToEndAsync()
    $proc.WaitForExit()
    $text = $out.Result + $err.Result
    if ($text.Length -gt 1048576) { $text = $text.Substring(0, 1048576) }
    Emit ([ordered]@{ ok = $true; pid = [uint64]$proc.Id; exit_code = [int64]$proc.ExitCode; output = $text })
} catch {
    Emit ([ordered]@{ ok = $false; error = "command_failed"; message = $_.Exception.Message; hresult = ('0x{0:X8}' -f $_.Exception.HResult) }); exit 1
}
