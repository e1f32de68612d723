# edrgate helper: process_list. Prints one line "EDRGATE-RESULT:<json>".
param([string]$p = "")
$ErrorActionPreference = "Stop"
function Emit($o) { Write-Output ("EDRGATE-RESULT:" + ($o | ConvertTo-Json -Compress -Depth 6)) }
try {
    $epoch = [datetime]'1970-01-01Z'
    $procs = Get-CimInstance Win32_Process | ForEach-Object {
        $owner = $null; $sid = $null
        try { $o = Invoke-CimMethod -InputObject $_ -MethodName GetOwner; if ($o.User) { $owner = "$($o.Domain)\$($o.User)" } } catch {}
        try { $sid = (Invoke-CimMethod -InputObject $_ -MethodName GetOwnerSid).Sid } catch {}
        $started = $null
        if ($_.CreationDate) { $started = [int64](($_.CreationDate.ToUniversalTime() - $epoch).TotalSeconds) }
        [ordered]@{ pid = [uint64]$_.ProcessId; ppid = [uint64]$_.ParentProcessId; name = $_.Name;
            path = $_.ExecutablePath; command_line = $_.CommandLine; user = $owner; sid = $sid; started = $started }
    }
    Emit ([ordered]@{ ok = $true; processes = @($procs) })
} catch {
    Emit ([ordered]@{ ok = $false; error = "command_failed"; message = $_.Exception.Message; hresult = ('0x{0:X8}' -f $_.Exception.HResult) })
}
